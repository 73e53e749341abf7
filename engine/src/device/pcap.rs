//! pcap writer. (in progress)
