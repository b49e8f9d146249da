//! Reading a ringseal metrics endpoint.

use std::net::SocketAddr;

/// `GET /metrics` from a ringseal metrics endpoint (plain HTTP/1.1, connection closed after).
pub fn scrape(addr: SocketAddr) -> String {
    get(addr, "/metrics")
}

/// `GET path` from a ringseal admin endpoint: the whole response, head and body.
pub fn get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// `GET /status`, parsed (panics with the response when it is not JSON).
pub fn status(addr: SocketAddr) -> serde_json::Value {
    let response = get(addr, "/status");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {response}"))
}

/// The value of the first sample line starting with `name_and_labels` (0 when absent).
pub fn sample(exposition: &str, name_and_labels: &str) -> f64 {
    exposition
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The sum of the samples of `name` that carry every label in `labels` (whatever their order).
pub fn samples(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
