//! `ringseal certs`: a cluster CA, node certificates (PEM + PKCS#12), or a signed keytool CSR.

use std::process::ExitCode;

use ringseal::pki::{NodeSpec, files};

use super::config_error;
use crate::args::Certs;

pub fn run(command: Certs) -> ExitCode {
    match issue(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => config_error(&e),
    }
}

fn issue(command: Certs) -> Result<(), files::CertsError> {
    match command {
        Certs::Ca {
            cluster_name,
            out,
            key_type,
            days,
            force,
        } => {
            for f in files::write_ca(&out, &cluster_name, key_type, days, force)? {
                println!("wrote {}", f.display());
            }
        }
        Certs::Node {
            ca,
            name,
            ips,
            dns,
            out,
            key_type,
            days,
            p12_password_file,
            force,
        } => {
            let ca = files::load_ca(&ca)?;
            let mut spec = NodeSpec::new(&name, &ips);
            spec.dns = dns;
            spec.key = key_type;
            spec.not_after = spec.not_before + std::time::Duration::from_secs(days * 86400 + 3600);
            let password = match &p12_password_file {
                Some(path) => Some(files::read_password_file(path)?),
                None => None,
            };
            let written = files::write_node(&ca, &spec, &out, password.as_deref(), force)?;
            for f in &written.files {
                println!("wrote {}", f.display());
            }
            if let Some(p) = written.password_file {
                println!("the PKCS#12 password is in {}", p.display());
            }
        }
        Certs::Sign { ca, csr, days } => {
            let ca = files::load_ca(&ca)?;
            print!("{}", files::sign_csr(&ca, &csr, days)?);
        }
    }
    Ok(())
}
