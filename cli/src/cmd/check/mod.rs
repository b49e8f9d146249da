//! `ringseal check`: load the config as `run` would, print the derived config (from cassandra.yaml)
//! and the PKI report; exit 0 (warnings allowed), 1 (an error in the PKI) or 64 (cannot load).

pub mod report;

use std::process::ExitCode;

use super::config_error;
use crate::args::CheckArgs;
use report::{Purpose, examine, render};

pub fn run(args: &CheckArgs) -> ExitCode {
    let loaded = match ringseal::load(&args.sources.sources()) {
        Ok(loaded) => loaded,
        Err(e) => {
            if args.json {
                let error = serde_json::json!({ "ok": false, "errors": [e.to_string()] });
                println!("{error:#}");
            }
            return config_error(&e);
        }
    };
    let c = &loaded.config;
    let report = examine(c, Purpose::Check);
    if args.json {
        let mut value = serde_json::to_value(&report).expect("the report serializes");
        if let Some(d) = &loaded.derived {
            value["cassandra_yaml"] = serde_json::json!({
                "derived_config": d.to_toml_redacted(),
                "warnings": d.warnings,
                "notes": d.notes,
            });
        }
        println!("{value:#}");
    } else {
        if let Some(d) = &loaded.derived {
            println!("# derived from cassandra.yaml (passwords redacted)");
            print!("{}", d.to_toml_redacted());
            for n in &d.notes {
                println!("# note: {n}");
            }
            for w in &d.warnings {
                println!("# warning: {w}");
            }
            println!();
        }
        print!("{}", render(&report, c));
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
