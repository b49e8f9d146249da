//! The host settings a figure depends on besides the CPU model: what the CPU offers AES-GCM (AES-NI,
//! VAES, AVX-512, VPCLMULQDQ), the TCP congestion control (a pacing default such as BBR costs every
//! pair a timer interrupt per burst on loopback) and what ringseal's loopback legs use instead, the
//! queueing discipline of `lo` (fq paces too), whether kTLS was available, and the GLIBC_TUNABLES
//! every proxy ran with (glibc's copy routine differs by them). Two hosts' figures compare only next
//! to these.

use serde::Serialize;

/// The CPU flags AES-GCM implementations choose their code path by.
const CPU_FLAGS: [&str; 4] = ["aes", "vaes", "avx512f", "vpclmulqdq"];

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// Which of aes, vaes, avx512f and vpclmulqdq /proc/cpuinfo lists.
    pub cpu_flags: Vec<&'static str>,
    /// `net.ipv4.tcp_congestion_control` of the namespace the run measured in.
    pub congestion_control: String,
    /// What ringseal's loopback legs use under the pairs' `[tcp]` setting (`auto` unless
    /// `--loopback-congestion-control` says otherwise), in words: "cubic (host default bbr paces)".
    pub ringseal_loopback_legs: String,
    /// The algorithm alone.
    pub ringseal_loopback_algorithm: String,
    /// `tcp_available_congestion_control` and `tcp_allowed_congestion_control`.
    pub congestion_control_available: Vec<String>,
    pub congestion_control_allowed: Vec<String>,
    /// The qdisc of `lo` (`ip link show lo`), e.g. "noqueue".
    pub lo_qdisc: String,
    pub ktls_available: bool,
    /// The probe's result: the ciphers, or why not (e.g. the `tls` module is not loaded).
    pub ktls: String,
    /// Whether /proc/net/tls_stat exists (the `tls` module is loaded).
    pub tls_stat: bool,
    /// The `GLIBC_TUNABLES` every proxy ran with ("" for none), and whether the bench set it
    /// (`--glibc-tunables`) or the proxies inherited it.
    pub glibc_tunables: String,
    pub glibc_tunables_inherited: bool,
}

impl Host {
    pub fn collect(
        loopback: &ringseal::tcp::LoopbackCongestion,
        glibc_tunables: Option<&str>,
    ) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags: Vec<&str> = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(Vec::new, |(_, v)| v.split_whitespace().collect());
        let cc = ringseal::tcp::HostCongestion::read();
        // ringseal refuses to start with a name it cannot set; the pairs' notes then say so.
        let loopback = ringseal::tcp::Loopback::resolve(loopback)
            .unwrap_or_else(|_| ringseal::tcp::Loopback::host());
        let ktls = ringseal::ktls_support();
        Self {
            cpu_flags: CPU_FLAGS
                .into_iter()
                .filter(|f| flags.contains(f))
                .collect(),
            congestion_control: or_unknown(cc.default),
            ringseal_loopback_legs: loopback.to_string(),
            ringseal_loopback_algorithm: loopback.effective().to_owned(),
            congestion_control_available: cc.available,
            congestion_control_allowed: cc.allowed,
            lo_qdisc: or_unknown(lo_qdisc().unwrap_or_default()),
            ktls_available: ktls.available(),
            ktls: ktls.describe(),
            tls_stat: std::path::Path::new("/proc/net/tls_stat").exists(),
            glibc_tunables: glibc_tunables.map_or_else(
                || std::env::var("GLIBC_TUNABLES").unwrap_or_default(),
                str::to_owned,
            ),
            glibc_tunables_inherited: glibc_tunables.is_none(),
        }
    }

    /// One line for the table and the CSV comment: "CPU flags: aes yes, vaes yes, avx512f no,
    /// vpclmulqdq yes; TCP congestion control bbr, ringseal's loopback legs cubic (...); lo qdisc
    /// noqueue; kTLS unavailable (the kernel's tls module is not loaded ...)".
    pub fn line(&self) -> String {
        let flags: Vec<String> = CPU_FLAGS
            .iter()
            .map(|f| {
                let yes = if self.cpu_flags.contains(f) {
                    "yes"
                } else {
                    "no"
                };
                format!("{f} {yes}")
            })
            .collect();
        // The probe's reason ends with advice for `ringseal run`; its first clause is the fact.
        let ktls = self.ktls.split(';').next().unwrap_or_default();
        let tunables = match (self.glibc_tunables.as_str(), self.glibc_tunables_inherited) {
            ("", _) => "none".to_owned(),
            (t, true) => format!("{t} (inherited)"),
            (t, false) => t.to_owned(),
        };
        format!(
            "CPU flags: {}; TCP congestion control {}, ringseal's loopback legs {}; lo qdisc {}; kTLS {} ({ktls}); GLIBC_TUNABLES of every proxy: {tunables}",
            flags.join(", "),
            self.congestion_control,
            self.ringseal_loopback_legs,
            self.lo_qdisc,
            if self.ktls_available {
                "available"
            } else {
                "unavailable"
            },
        )
    }
}

fn or_unknown(s: String) -> String {
    if s.is_empty() { "unknown".into() } else { s }
}

/// The word after "qdisc" in `ip link show lo`.
fn lo_qdisc() -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["link", "show", "lo"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    words.find(|w| *w == "qdisc")?;
    words.next().map(str::to_owned)
}
