//! `[shadow]`: a candidate configuration decided beside the live one, never enforced.

use std::path::PathBuf;

use serde::Deserialize;

use super::de;

/// `[shadow]`: the candidate policy (a full milter.toml) to try against real traffic.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShadowConfig {
    /// The candidate milter.toml. Default: none (no shadow policy).
    #[serde(deserialize_with = "de::opt::<_, de::PathP>")]
    pub config: Option<PathBuf>,
}
