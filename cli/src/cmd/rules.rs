//! `ringseal rules`: print, apply or remove the interception rules.

use std::io::Write as _;
use std::process::ExitCode;

use ringseal::config::Config;
use ringseal::rules;

use super::{config_error, failure};
use crate::args::RulesArgs;

pub fn run(args: &RulesArgs) -> ExitCode {
    if args.remove {
        return match rules::remove() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => failure(&e),
        };
    }
    let Some(config) = &args.config else {
        return config_error(&"rules: --config is required unless --remove is given");
    };
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let Some(uid) = args.uid.or_else(rules::default_uid) else {
        return config_error(
            &"rules: there is no `ringseal` user on this host and no --uid: give the uid ringseal runs \
              as (e.g. --uid $(id -u ringseal)); its own connections are the only ones not redirected",
        );
    };
    if uid == 0 {
        let _ = writeln!(
            std::io::stderr(),
            "warning: --uid 0: connections of every root process bypass the interception; run \
             ringseal as a user of its own"
        );
    }
    let options = rules::RuleOptions {
        storage_port: args.storage_port,
        uid,
        strict: args.strict,
    };
    let generated = if args.iptables {
        rules::iptables(&config, &options)
    } else {
        rules::nftables(&config, &options)
    };
    let text = match generated {
        Ok(t) => t,
        Err(e) => return config_error(&e),
    };
    if !args.apply {
        print!("{text}");
        return ExitCode::SUCCESS;
    }
    match rules::apply(&text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failure(&e),
    }
}
