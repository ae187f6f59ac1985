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

/// Casebook's descriptors with `google.rpc`'s (the error details), for the
/// JSON mapping: built once per server at start.
pub fn descriptor_pool() -> Result<prost_reflect::DescriptorPool, prost_reflect::DescriptorError> {
    use prost::Message as _;
    let mut pool = prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)?;
    // google.rpc imports well-known types the pool already holds.
    let rpc = prost_types::FileDescriptorSet::decode(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .unwrap_or_default();
    let missing: Vec<_> = rpc
        .file
        .into_iter()
        .filter(|file| pool.get_file_by_name(file.name()).is_none())
        .collect();
    pool.add_file_descriptor_protos(missing)?;
    Ok(pool)
}
