//! Certificates made with `openssl` as a user would: a test CA and leaf certificates.

use std::path::{Path, PathBuf};

/// A test CA in `dir` and a way to issue leaf certificates for DNS names.
pub struct Ca {
    pub dir: PathBuf,
}

pub fn openssl(args: &[&str], dir: &Path) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Ca {
    pub fn new(dir: &Path) -> Ca {
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=canarygate test CA",
                "-days",
                "2",
            ],
            dir,
        );
        Ca { dir: dir.to_path_buf() }
    }

    /// Issues `<file>.pem` and `<file>.key` for `name` (CN and subjectAltName), written in place
    /// (through a temporary file and a rename each, as a certificate manager does).
    pub fn issue(&self, file: &str, name: &str) -> (PathBuf, PathBuf) {
        let ext = self.dir.join(format!("{file}.ext"));
        std::fs::write(&ext, format!("subjectAltName=DNS:{name}\n")).unwrap();
        openssl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{file}.key.new"),
                "-out",
                &format!("{file}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
            &self.dir,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &format!("{file}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{file}.pem.new"),
                "-days",
                "2",
                "-extfile",
                &format!("{file}.ext"),
            ],
            &self.dir,
        );
        let (pem, key) = (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}.key")));
        std::fs::rename(self.dir.join(format!("{file}.key.new")), &key).unwrap();
        std::fs::rename(self.dir.join(format!("{file}.pem.new")), &pem).unwrap();
        (pem, key)
    }
}
