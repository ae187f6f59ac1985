//! The gRPC methods a server registered at start, read from the descriptor
//! sets compiled into the binary.
//!
//! Two things depend on knowing them before any call arrives: metrics label
//! a call by its method only when the method is one of these (any other path
//! is `other`, so made-up paths cannot grow the registry), and admission puts
//! streaming methods under their own limit (a stream can stay open for hours;
//! a unary call cannot), with health checks exempt from both.

use std::{collections::HashMap, sync::Arc};

use prost::Message;

/// The label every path outside the table shares.
pub const OTHER: &str = "other";

/// The one method that is always admitted: probes must be answered however
/// busy the server is, or an orchestrator restarts a healthy process.
const HEALTH_CHECK: &str = "grpc.health.v1.Health/Check";
const HEALTH_SERVICE: &str = "grpc.health.v1.Health/";

/// How admission treats a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodKind {
    /// A unary call: holds a `MAX_CONCURRENT_CALLS` slot.
    Unary,
    /// A client, server or bidirectional stream: holds a stream slot.
    Stream,
    /// `Health/Check`: never refused.
    Probe,
}

/// One registered method.
#[derive(Clone, Debug)]
pub struct Method {
    /// `package.Service/Method`, the metrics label.
    pub label: Arc<str>,
    /// How admission treats it.
    pub kind: MethodKind,
}

impl Method {
    /// Whether this is a `grpc.health.v1.Health` method (probes: quiet in logs).
    pub fn is_health(&self) -> bool {
        self.label.starts_with(HEALTH_SERVICE)
    }
}

/// The table of a server's methods, by request path.
#[derive(Debug)]
pub struct Methods {
    by_path: HashMap<String, Method>,
    other: Method,
}

/// A descriptor set compiled into the binary did not decode (a build bug).
#[derive(Debug, thiserror::Error)]
#[error("a compiled-in descriptor set does not decode: {0}")]
pub struct DescriptorError(#[from] prost::DecodeError);

impl Methods {
    /// Every method of the services named in `services`, found in `sets`
    /// (encoded `FileDescriptorSet`s).
    pub fn new(services: &[&str], sets: &[&[u8]]) -> Result<Self, DescriptorError> {
        let mut by_path = HashMap::new();
        for set in sets {
            let set = prost_types::FileDescriptorSet::decode(*set)?;
            for file in &set.file {
                for service in &file.service {
                    let name = format!("{}.{}", file.package(), service.name());
                    if !services.contains(&name.as_str()) {
                        continue;
                    }
                    for method in &service.method {
                        let label = format!("{name}/{}", method.name());
                        let kind = if label == HEALTH_CHECK {
                            MethodKind::Probe
                        } else if method.client_streaming() || method.server_streaming() {
                            MethodKind::Stream
                        } else {
                            MethodKind::Unary
                        };
                        by_path.insert(
                            format!("/{label}"),
                            Method {
                                label: label.into(),
                                kind,
                            },
                        );
                    }
                }
            }
        }
        Ok(Self {
            by_path,
            other: Method {
                label: OTHER.into(),
                kind: MethodKind::Unary,
            },
        })
    }

    /// The method at `path`, or the shared `other` entry (a unary call).
    pub fn resolve(&self, path: &str) -> &Method {
        self.by_path.get(path).unwrap_or(&self.other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Methods {
        Methods::new(
            &["grpc.health.v1.Health", "casebook.cases.v1.CaseService"],
            &[
                crate::pb::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ],
        )
        .unwrap()
    }

    #[test]
    fn registered_methods_are_classified_and_anything_else_is_other() {
        let methods = table();
        let get = methods.resolve("/casebook.cases.v1.CaseService/GetCase");
        assert_eq!(&*get.label, "casebook.cases.v1.CaseService/GetCase");
        assert_eq!(get.kind, MethodKind::Unary);
        assert_eq!(
            methods.resolve("/grpc.health.v1.Health/Watch").kind,
            MethodKind::Stream
        );
        assert_eq!(
            methods.resolve("/grpc.health.v1.Health/Check").kind,
            MethodKind::Probe
        );
        for unknown in [
            "/casebook.auth.v1.AuthService/WhoAmI",
            "/casebook.cases.v1.CaseService/Nope",
            "/x/y/z",
            "/",
        ] {
            assert_eq!(&*methods.resolve(unknown).label, OTHER, "{unknown}");
        }
    }
}
