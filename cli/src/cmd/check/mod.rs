//! `ringseal check`: load the config as `run` would, print the derived config (from cassandra.yaml) and
//! the `--set` overrides, then the PKI report; exit 0 (warnings allowed), 1 (an error in the PKI) or 64
//! (cannot run). When the key material does not load, it reports every problem it finds (each store on
//! its own), not only the first one `run` stops at.

pub mod report;

use std::io::Write as _;
use std::process::ExitCode;

use ringseal::config::Loaded;

use super::{EXIT_CONFIG, config_error};
use crate::args::CheckArgs;
use report::{Purpose, examine, render};

pub fn run(args: &CheckArgs) -> ExitCode {
    let sources = args.sources.sources();
    let loaded = match sources.load() {
        Ok(loaded) => loaded,
        Err(e) => return refused::<()>(args, &[e.to_string()], None),
    };
    let Loaded {
        config,
        derived,
        set,
    } = loaded;
    let config = match ringseal::load_tls(config.clone(), sources.path()) {
        Ok(c) => Loaded {
            config: c,
            derived,
            set,
        },
        Err(first) => {
            let (parts, mut problems) = ringseal::diagnose(&config, sources.path());
            if problems.is_empty() {
                // The diagnosis examines what `load` does; should they ever differ, `load` has the say.
                problems.push(first);
            }
            let errors: Vec<String> = problems.iter().map(ToString::to_string).collect();
            let shown = Loaded {
                config,
                derived,
                set,
            };
            if !args.json {
                print_sources(&shown);
                let mut out = format!(
                    "config NOT usable: {} problem(s) with the key material\n",
                    errors.len()
                );
                for p in &parts {
                    out.push_str(&format!("loaded     {p}\n"));
                }
                out.push_str(&ringseal::describe(&shown.config));
                print!("{out}");
            }
            return refused(args, &errors, Some((&shown, &parts)));
        }
    };
    let c = &config.config;
    let report = examine(c, Purpose::Check);
    if args.json {
        let mut value = serde_json::to_value(&report).expect("the report serializes");
        add_sources_json(&mut value, &config);
        println!("{value:#}");
    } else {
        print_sources(&config);
        print!("{}", render(&report, c));
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The config cannot run: every error on its own line on stderr (and in the JSON), exit 64.
fn refused<T>(
    args: &CheckArgs,
    errors: &[String],
    shown: Option<(&Loaded<T>, &[String])>,
) -> ExitCode {
    if args.json {
        let mut value = serde_json::json!({ "ok": false, "errors": errors });
        if let Some((loaded, parts)) = shown {
            value["loaded"] = serde_json::json!(parts);
            add_sources_json(&mut value, loaded);
        }
        println!("{value:#}");
    }
    let Some((last, rest)) = errors.split_last() else {
        return ExitCode::from(EXIT_CONFIG);
    };
    for e in rest {
        // Not `eprintln!`, which panics when stderr is closed.
        let _ = writeln!(std::io::stderr(), "error: {e}");
    }
    config_error(last)
}

/// The derived config, its notes and warnings, and the `--set` overrides.
fn print_sources<T>(loaded: &Loaded<T>) {
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
    if !loaded.set.is_empty() {
        println!("# set on the command line (--set), over the config above");
        for line in &loaded.set {
            println!("{line}");
        }
        println!();
    }
}

fn add_sources_json<T>(value: &mut serde_json::Value, loaded: &Loaded<T>) {
    if let Some(d) = &loaded.derived {
        value["cassandra_yaml"] = serde_json::json!({
            "derived_config": d.to_toml_redacted(),
            "warnings": d.warnings,
            "notes": d.notes,
        });
    }
    if !loaded.set.is_empty() {
        value["set"] = serde_json::json!(loaded.set);
    }
}
