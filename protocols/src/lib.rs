//! Sans-IO mail protocol sessions (SMTP, POP3; later IMAP, LMTP): bytes in, replies and
//! storage requests out, with no sockets inside. Filled by issue 3; nothing here yet.
