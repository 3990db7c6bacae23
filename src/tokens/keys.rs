//! Key generation for `sis-gateway keygen`: a PKCS#8 signing key and a sealing key.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::{fill_random, AccessTokens, TokenError};
use crate::config::Algorithm;

/// What [`keygen`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keygen {
    /// The signing key PEM, for `tokens.signing_keys`.
    pub signing_key: PathBuf,
    /// The sealing key (standard base64), for `tokens.sealing_keys` as `"file:PATH"`.
    pub sealing_key: PathBuf,
    pub kid: String,
    pub algorithm: Algorithm,
}

/// A new private key of `alg` as PKCS#8 DER (RSA: 2048 bits).
pub(crate) fn generate_pkcs8(alg: Algorithm) -> Result<Vec<u8>, TokenError> {
    let der = match alg {
        Algorithm::Es256 => {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| TokenError::KeyGeneration)?
                .as_ref()
                .to_vec()
        }
        Algorithm::Rs256 => {
            let kp =
                RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| TokenError::KeyGeneration)?;
            AsDer::<Pkcs8V1Der>::as_der(&kp)
                .map_err(|_| TokenError::KeyGeneration)?
                .as_ref()
                .to_vec()
        }
        Algorithm::EdDsa => {
            // PKCS#8 v1, the form OpenSSL writes and every JOSE library reads.
            let kp = Ed25519KeyPair::generate().map_err(|_| TokenError::KeyGeneration)?;
            AsDer::<Pkcs8V1Der>::as_der(&kp)
                .map_err(|_| TokenError::KeyGeneration)?
                .as_ref()
                .to_vec()
        }
    };
    Ok(der)
}

/// A new signing key of `alg` as a PKCS#8 PEM (`PRIVATE KEY`; RSA: 2048 bits).
pub fn generate_pem(alg: Algorithm) -> Result<Vec<u8>, TokenError> {
    let der = generate_pkcs8(alg)?;
    let pem = pem::encode_config(
        &pem::Pem::new("PRIVATE KEY", der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    Ok(pem.into_bytes())
}

/// 32 random bytes in standard base64, the form `tokens.sealing_keys` takes.
pub fn generate_sealing_key() -> String {
    let mut key = [0u8; 32];
    fill_random(&mut key);
    STANDARD.encode(key)
}

/// Writes a signing key `signing-<alg>-<kid>.pem` and `sealing.key` into `dir`
/// (created if missing), both readable by the owner only. Existing files are
/// never overwritten: then nothing is written at all.
pub fn keygen(dir: &Path, alg: Algorithm) -> Result<Keygen, TokenError> {
    let pem = generate_pem(alg)?;
    let tokens = AccessTokens::from_pem(std::slice::from_ref(&pem))?;
    let kid = tokens.kid().to_owned();
    let signing_key = dir.join(format!(
        "signing-{}-{kid}.pem",
        alg.name().to_ascii_lowercase()
    ));
    let sealing_key = dir.join("sealing.key");
    for p in [&signing_key, &sealing_key] {
        if p.exists() {
            return Err(TokenError::AlreadyExists(p.clone()));
        }
    }
    create_private_dir(dir)?;
    write_new(&signing_key, &pem)?;
    let sealing = format!("{}\n", generate_sealing_key());
    if let Err(e) = write_new(&sealing_key, sealing.as_bytes()) {
        // Leave no half result behind.
        let _ = std::fs::remove_file(&signing_key);
        return Err(e);
    }
    Ok(Keygen {
        signing_key,
        sealing_key,
        kid,
        algorithm: alg,
    })
}

fn create_private_dir(dir: &Path) -> Result<(), TokenError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| TokenError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// Creates `path` (failing if it exists) with mode 0600 and writes `contents`.
fn write_new(path: &Path, contents: &[u8]) -> Result<(), TokenError> {
    let io_err = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            TokenError::AlreadyExists(path.to_path_buf())
        } else {
            TokenError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(io_err)?;
    f.write_all(contents).map_err(io_err)?;
    f.sync_all().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{random_hex, AccessTokens};

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("sis-keygen-{}", random_hex(8)))
    }

    #[test]
    fn generated_pems_load() {
        for alg in [Algorithm::Es256, Algorithm::Rs256, Algorithm::EdDsa] {
            let pem = generate_pem(alg).unwrap();
            let text = String::from_utf8(pem.clone()).unwrap();
            assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{alg:?}");
            assert!(!text.contains('\r'));
            assert_eq!(AccessTokens::from_pem(&[pem]).unwrap().algorithm(), alg);
        }
    }

    #[test]
    fn sealing_key_decodes_to_32_bytes() {
        let k = generate_sealing_key();
        assert_eq!(STANDARD.decode(&k).unwrap().len(), 32);
        assert_ne!(k, generate_sealing_key());
    }

    #[test]
    fn keygen_writes_loadable_private_files() {
        let dir = temp_dir().join("nested");
        let out = keygen(&dir, Algorithm::Es256).unwrap();
        assert_eq!(out.algorithm, Algorithm::Es256);
        let name = out.signing_key.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, format!("signing-es256-{}.pem", out.kid));

        let pem = std::fs::read(&out.signing_key).unwrap();
        let t = AccessTokens::from_pem(&[pem]).unwrap();
        assert_eq!(t.kid(), out.kid);
        assert_eq!(t.algorithm(), Algorithm::Es256);

        let sealing = std::fs::read_to_string(&out.sealing_key).unwrap();
        let key: [u8; 32] = STANDARD.decode(sealing.trim()).unwrap().try_into().unwrap();
        let s = crate::tokens::Sealer::new(&[key]);
        let p = crate::tokens::RefreshPayload::new("h", "u", "c");
        assert_eq!(s.open(&s.seal(&p)), Ok(p));

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for p in [&out.signing_key, &out.sealing_key] {
                let mode = std::fs::metadata(p).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", p.display());
            }
        }

        // A second run refuses, and leaves no new signing key behind.
        let err = keygen(&dir, Algorithm::EdDsa).unwrap_err();
        assert!(matches!(err, TokenError::AlreadyExists(ref p) if p.ends_with("sealing.key")));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn keygen_each_algorithm() {
        for alg in [Algorithm::Rs256, Algorithm::EdDsa] {
            let dir = temp_dir();
            let out = keygen(&dir, alg).unwrap();
            let pem = std::fs::read(&out.signing_key).unwrap();
            assert_eq!(AccessTokens::from_pem(&[pem]).unwrap().algorithm(), alg);
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}
