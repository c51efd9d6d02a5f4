//! Test certificates (rcgen): a CA, a server certificate for 127.0.0.1 and a client
//! certificate, and nats-server configs that require them.

use std::path::PathBuf;

use piggybank_testkit::{free_port, NatsServer};

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();

        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "piggybank test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        write("ca.pem", ca.self_signed(&ca_key).unwrap().pem());
        let issuer = Issuer::new(ca, ca_key);

        for (name, san, usage) in [
            ("server", "127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth),
            (
                "client",
                "piggybank.test",
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        ] {
            let mut params = CertificateParams::new(vec![san.to_string()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            params.use_authority_key_identifier_extension = true;
            let key = KeyPair::generate().unwrap();
            write(
                &format!("{name}.pem"),
                params.signed_by(&key, &issuer).unwrap().pem(),
            );
            write(&format!("{name}-key.pem"), key.serialize_pem());
        }
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn file(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// `--tls-ca`, `--tls-cert` and `--tls-key` with this PKI's CA and client certificate.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--tls-ca".into(),
            self.file("ca.pem"),
            "--tls-cert".into(),
            self.file("client.pem"),
            "--tls-key".into(),
            self.file("client-key.pem"),
        ]
    }

    /// A server config requiring TLS with a verified client certificate, plus `extra`.
    pub fn server_config(&self, tls_extra: &str, extra: &str) -> PathBuf {
        let config = self.path(&format!("nats-{}.conf", free_port()));
        let text = format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  {tls_extra}\n}}\n{extra}\n",
            self.file("server.pem"),
            self.file("server-key.pem"),
            self.file("ca.pem"),
        );
        std::fs::write(&config, text).unwrap();
        config
    }

    /// The test's own client: the same CA and client certificate, through async-nats.
    pub async fn client(&self, nats: &NatsServer, tls_first: bool) -> async_nats::Client {
        let mut options = async_nats::ConnectOptions::new()
            .add_root_certificates(self.path("ca.pem"))
            .add_client_certificate(self.path("client.pem"), self.path("client-key.pem"))
            .require_tls(true);
        if tls_first {
            options = options.tls_first();
        }
        options
            .connect(nats.url())
            .await
            .expect("TLS connect to test nats")
    }
}
