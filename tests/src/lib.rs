//! Test support: network namespaces and veth topologies.
