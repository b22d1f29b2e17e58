//! Storage configuration: `common.storage.*` in Mimir's YAML layout.
//!
//! ```yaml
//! common:
//!   storage:
//!     backend: s3            # or filesystem (the default)
//!     filesystem:
//!       dir: ./data/bucket
//!     s3:
//!       endpoint: minio:9000 # host:port; an explicit http:// or https:// is honoured
//!       bucket_name: norn-blocks
//!       access_key_id: norn
//!       secret_access_key: secret
//!       region: us-east-1
//!       insecure: true       # plain HTTP
//! ```
//!
//! The secret never leaves this module in clear: `Debug` masks it and [`StorageConfig::masked`]
//! gives the copy that `/config` shows.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};

/// What a non-empty secret is replaced with in `Debug` output and [`StorageConfig::masked`].
pub const MASK: &str = "********";

/// The `filesystem` backend name.
pub const BACKEND_FILESYSTEM: &str = "filesystem";
/// The `s3` backend name.
pub const BACKEND_S3: &str = "s3";

/// `common.storage`: which backend holds the bucket and how to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `filesystem` or `s3`.
    pub backend: String,
    /// Settings of the `filesystem` backend.
    pub filesystem: FilesystemConfig,
    /// Settings of the `s3` backend.
    pub s3: S3Config,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: BACKEND_FILESYSTEM.into(),
            filesystem: Default::default(),
            s3: Default::default(),
        }
    }
}

impl StorageConfig {
    /// Checks what can be checked without talking to the backend.
    pub fn validate(&self) -> Result<()> {
        match self.backend.as_str() {
            BACKEND_FILESYSTEM => {
                if self.filesystem.dir.as_os_str().is_empty() {
                    return Err(invalid(
                        "common.storage.filesystem.dir must not be empty with backend filesystem",
                    ));
                }
                Ok(())
            }
            BACKEND_S3 => self.s3.validate(),
            other => Err(invalid(format!(
                "common.storage.backend: unknown backend {other:?}, expected \"filesystem\" or \"s3\""
            ))),
        }
    }

    /// A copy with the S3 secret replaced by `********` (when set), for `/config` and logs.
    pub fn masked(&self) -> Self {
        Self {
            s3: self.s3.masked(),
            ..self.clone()
        }
    }
}

/// `common.storage.filesystem`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesystemConfig {
    /// The directory that is the bucket's root; created when missing.
    pub dir: PathBuf,
}

impl Default for FilesystemConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./data/bucket"),
        }
    }
}

/// `common.storage.s3`. `Debug` masks `secret_access_key`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// `host:port` (the scheme follows `insecure`) or a full `http(s)://host:port` URL. Empty
    /// means AWS' endpoint for `region`.
    pub endpoint: String,
    /// The bucket; it must exist.
    pub bucket_name: String,
    /// Access key id; empty means credentials from the EC2 instance metadata service.
    pub access_key_id: String,
    /// Secret access key. Masked in `Debug`, `/config` and every error.
    pub secret_access_key: String,
    /// Region; empty means `us-east-1` (what MinIO and moto expect).
    pub region: String,
    /// Plain HTTP to the endpoint.
    pub insecure: bool,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket_name", &self.bucket_name)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &mask(&self.secret_access_key))
            .field("region", &self.region)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl S3Config {
    /// A copy with the secret replaced by `********` (when set).
    pub fn masked(&self) -> Self {
        Self {
            secret_access_key: mask(&self.secret_access_key).to_owned(),
            ..self.clone()
        }
    }

    /// The region to sign with: `region`, or `us-east-1` when empty.
    pub fn effective_region(&self) -> &str {
        if self.region.is_empty() {
            "us-east-1"
        } else {
            &self.region
        }
    }

    /// The endpoint as a URL (`None` for AWS' own endpoint), with the scheme `insecure` implies
    /// when the configured endpoint has none.
    pub fn endpoint_url(&self) -> Option<String> {
        let endpoint = self.endpoint.trim().trim_end_matches('/');
        if endpoint.is_empty() {
            None
        } else if endpoint.contains("://") {
            Some(endpoint.to_owned())
        } else if self.insecure {
            Some(format!("http://{endpoint}"))
        } else {
            Some(format!("https://{endpoint}"))
        }
    }

    fn validate(&self) -> Result<()> {
        if self.bucket_name.trim().is_empty() {
            return Err(invalid(
                "common.storage.s3.bucket_name is required with backend s3",
            ));
        }
        if self.endpoint.trim().is_empty() && self.region.trim().is_empty() {
            return Err(invalid(
                "common.storage.s3: set endpoint (MinIO, moto, other S3-compatible services) or region (AWS)",
            ));
        }
        if let Some(url) = self.endpoint_url()
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(format!(
                "common.storage.s3.endpoint {:?}: only http:// and https:// are supported",
                self.endpoint
            )));
        }
        if self.access_key_id.is_empty() != self.secret_access_key.is_empty() {
            return Err(invalid(
                "common.storage.s3: access_key_id and secret_access_key must be set together",
            ));
        }
        Ok(())
    }
}

fn mask(secret: &str) -> &str {
    if secret.is_empty() { "" } else { MASK }
}

fn invalid(message: impl Into<String>) -> StorageError {
    StorageError::InvalidConfig(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(endpoint: &str, region: &str) -> StorageConfig {
        StorageConfig {
            backend: "s3".into(),
            s3: S3Config {
                endpoint: endpoint.into(),
                bucket_name: "blocks".into(),
                access_key_id: "AKIA".into(),
                secret_access_key: "hunter2".into(),
                region: region.into(),
                insecure: false,
            },
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_mimirs() {
        let cfg = StorageConfig::default();
        assert_eq!(cfg.backend, "filesystem");
        assert_eq!(cfg.filesystem.dir, PathBuf::from("./data/bucket"));
        assert_eq!(cfg.s3, S3Config::default());
        cfg.validate().unwrap();
        let parsed: StorageConfig = serde_yaml::from_str("{}").unwrap();
        assert_eq!(parsed, cfg);
    }

    #[test]
    fn yaml_round_trip_in_mimir_layout() {
        let yaml = "backend: s3\n\
                    s3:\n  endpoint: 127.0.0.1:9000\n  bucket_name: norn\n  access_key_id: k\n  \
                    secret_access_key: s\n  region: eu-west-1\n  insecure: true\n";
        let cfg: StorageConfig = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(cfg.backend, "s3");
        assert_eq!(cfg.s3.endpoint, "127.0.0.1:9000");
        assert_eq!(cfg.s3.bucket_name, "norn");
        assert_eq!(cfg.s3.access_key_id, "k");
        assert_eq!(cfg.s3.secret_access_key, "s");
        assert_eq!(cfg.s3.region, "eu-west-1");
        assert!(cfg.s3.insecure);
        // Unset blocks keep their defaults.
        assert_eq!(cfg.filesystem, FilesystemConfig::default());
        let back: StorageConfig =
            serde_yaml::from_str(&serde_yaml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        for (yaml, key) in [
            ("backend: s3\nbuckt: x\n", "buckt"),
            ("s3:\n  bucketname: x\n", "bucketname"),
            ("filesystem:\n  directory: /x\n", "directory"),
        ] {
            let err = serde_yaml::from_str::<StorageConfig>(yaml).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn secret_is_masked_in_debug_and_masked() {
        let cfg = s3("127.0.0.1:9000", "");
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("secret_access_key: \"********\""), "{debug}");
        assert!(
            debug.contains("AKIA"),
            "the key id is not a secret: {debug}"
        );
        let pretty = format!("{cfg:#?}");
        assert!(!pretty.contains("hunter2"), "{pretty}");

        let masked = cfg.masked();
        assert_eq!(masked.s3.secret_access_key, "********");
        assert_eq!(masked.s3.access_key_id, "AKIA");
        assert_eq!(masked.s3.endpoint, cfg.s3.endpoint);
        assert!(!serde_yaml::to_string(&masked).unwrap().contains("hunter2"));
        // The original is untouched.
        assert_eq!(cfg.s3.secret_access_key, "hunter2");

        // An empty secret stays empty (nothing to hide, and it shows it is unset).
        let unset = StorageConfig::default();
        assert_eq!(unset.masked().s3.secret_access_key, "");
        assert!(format!("{unset:?}").contains("secret_access_key: \"\""));
    }

    #[test]
    fn validate_backends() {
        let mut cfg = StorageConfig {
            backend: "gcs".into(),
            ..Default::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("gcs") && err.contains("filesystem"), "{err}");
        cfg.backend = "filesystem".into();
        cfg.filesystem.dir = PathBuf::new();
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn validate_s3() {
        s3("127.0.0.1:9000", "").validate().unwrap();
        s3("", "eu-west-1").validate().unwrap();
        s3("https://s3.example.com", "").validate().unwrap();

        let err = s3("", "").validate().unwrap_err();
        assert!(matches!(err, StorageError::InvalidConfig(_)));
        assert!(err.to_string().contains("endpoint"), "{err}");

        let mut no_bucket = s3("127.0.0.1:9000", "");
        no_bucket.s3.bucket_name.clear();
        assert!(
            no_bucket
                .validate()
                .unwrap_err()
                .to_string()
                .contains("bucket_name")
        );

        let mut half_keys = s3("127.0.0.1:9000", "");
        half_keys.s3.secret_access_key.clear();
        assert!(half_keys.validate().is_err());

        let mut no_keys = s3("127.0.0.1:9000", "");
        no_keys.s3.secret_access_key.clear();
        no_keys.s3.access_key_id.clear();
        no_keys.validate().unwrap();

        let err = s3("ftp://x:21", "").validate().unwrap_err().to_string();
        assert!(err.contains("ftp://x:21"), "{err}");
        assert!(!err.contains("hunter2"));
    }

    #[test]
    fn endpoint_url_and_region() {
        let mut cfg = s3("minio:9000", "").s3;
        assert_eq!(cfg.endpoint_url().as_deref(), Some("https://minio:9000"));
        assert_eq!(cfg.effective_region(), "us-east-1");
        cfg.insecure = true;
        assert_eq!(cfg.endpoint_url().as_deref(), Some("http://minio:9000"));
        cfg.endpoint = "https://s3.example.com/".into();
        assert_eq!(
            cfg.endpoint_url().as_deref(),
            Some("https://s3.example.com")
        );
        cfg.endpoint.clear();
        cfg.region = "eu-west-1".into();
        assert_eq!(cfg.endpoint_url(), None);
        assert_eq!(cfg.effective_region(), "eu-west-1");
    }
}
