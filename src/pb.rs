//! Code generated from `proto/` by `build.rs`. Never edited by hand.

#![allow(missing_docs, clippy::all)]

/// Casebook's own packages.
pub mod casebook {
    /// `casebook.auth.v1`: token verification and the caller's identity.
    pub mod auth {
        /// Version 1 of the auth contract.
        pub mod v1 {
            tonic::include_proto!("casebook.auth.v1");
        }
    }

    /// `casebook.cases.v1`: the caller's cases.
    pub mod cases {
        /// Version 1 of the cases contract.
        pub mod v1 {
            tonic::include_proto!("casebook.cases.v1");
        }
    }
}

/// Encoded descriptors of every Casebook contract, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("casebook_descriptor");
