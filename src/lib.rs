//! The Trellis contract: messages, clients and servers generated from
//! `proto/`, plus the descriptor set that reflection serves.
#![forbid(unsafe_code)]

/// Encoded `FileDescriptorSet` of every Trellis proto (and its imports), for
/// gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("trellis_descriptor");

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
