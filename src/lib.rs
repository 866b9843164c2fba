//! The Trellis contract: messages, clients and servers generated from
//! `proto/`, plus the descriptor set that reflection serves.
#![forbid(unsafe_code)]

/// Encoded `FileDescriptorSet` of every Trellis proto (and its imports), for
/// gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("trellis_descriptor");

/// What an RPC's options in `proto/` declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodPolicy {
    /// `/<package>.<Service>/<Method>`, as in an HTTP/2 `:path`.
    pub path: &'static str,
    /// Who may call it (`trellis.common.v1.caller`; users when unset).
    pub caller: common::v1::Caller,
    /// `idempotency_level = NO_SIDE_EFFECTS`: it only reads, so a cookie call
    /// needs no CSRF token.
    pub read_only: bool,
    /// Answers with a stream (`returns (stream ...)`): the stream rules of
    /// the server stack apply (token expiry, session end, shutdown, caps).
    pub server_streaming: bool,
}

include!(concat!(env!("OUT_DIR"), "/trellis_methods.rs"));

pub mod common {
    pub mod v1 {
        tonic::include_proto!("trellis.common.v1");
    }
}

pub mod auth {
    pub mod v1 {
        tonic::include_proto!("trellis.auth.v1");
    }
}

pub mod session {
    pub mod v1 {
        tonic::include_proto!("trellis.session.v1");
    }
}

pub mod cart {
    pub mod v1 {
        tonic::include_proto!("trellis.cart.v1");
    }
}

pub mod order {
    pub mod v1 {
        tonic::include_proto!("trellis.order.v1");
    }
}

pub mod execution {
    pub mod v1 {
        tonic::include_proto!("trellis.execution.v1");
    }
}
