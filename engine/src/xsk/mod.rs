//! AF_XDP port. (in progress)
