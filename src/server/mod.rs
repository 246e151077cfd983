//! The KMS v2 gRPC server on a unix socket. (Being written.)
