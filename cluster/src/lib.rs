//! The cluster layer: framed TCP transport, membership, user map, mail map, replication, load
//! balancing, and the node runtime that wires engine and protocols. Filled from issue 3 on.
