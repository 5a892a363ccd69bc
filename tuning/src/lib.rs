//! `porcupine-tune`: probes each data directory (append + fdatasync latency and bandwidth
//! through io_uring) and recommends settings. Built in issue 8; until then the engine's
//! `engine-bench` (in `bench/`) measures a directory.
