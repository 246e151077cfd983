//! A KMS v2 gRPC client over a unix socket. (Being written.)
