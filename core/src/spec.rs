//! The desired state an operator writes: `control/etcd-cluster-spec` in the
//! store (upstream's JSON, read also with snake_case names).

use serde::{Deserialize, Serialize};

/// The desired state: `control/etcd-cluster-spec`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    #[serde(default, alias = "member_count", skip_serializing_if = "is_zero_i32")]
    pub member_count: i32,
    #[serde(
        default,
        alias = "etcd_version",
        skip_serializing_if = "String::is_empty"
    )]
    pub etcd_version: String,
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}
