//! A stand-in for Cassandra's CQL port: just enough of the native protocol v4 for a real driver to
//! connect, run its control-connection queries and one `SELECT release_version FROM system.local`.
//!
//! OPTIONS is answered with SUPPORTED, STARTUP and REGISTER with READY, a QUERY on `system.local`
//! with one row of the columns it names (every column of the driver's queries has a value of its
//! type), a QUERY on `system.peers` / `system.peers_v2` with no rows (a one-node cluster), anything
//! else with an ERROR. Frames of another protocol version get the protocol error Cassandra sends, so
//! a driver that starts higher settles on v4. One thread per connection, blocking I/O.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What `system.local` says its `release_version` is.
pub const RELEASE_VERSION: &str = "4.1.5-ringseal-stub";

const OPTIONS: u8 = 0x05;
const STARTUP: u8 = 0x01;
const REGISTER: u8 = 0x0B;
const QUERY: u8 = 0x07;
const ERROR: u8 = 0x00;
const READY: u8 = 0x02;
const SUPPORTED: u8 = 0x06;
const RESULT: u8 = 0x08;
/// A request larger than this is not one a driver sends while connecting.
const MAX_BODY: usize = 1 << 20;

/// The stub: its address and how many QUERY frames it answered.
pub struct CqlStub {
    pub addr: SocketAddr,
    queries: Arc<AtomicUsize>,
}

impl CqlStub {
    /// Listens on 127.0.0.1:0 and serves until the test process ends.
    pub fn start() -> Self {
        let listener = TcpListener::bind((crate::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let counted = queries.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let counted = counted.clone();
                std::thread::spawn(move || serve(stream, &counted));
            }
        });
        Self { addr, queries }
    }

    /// QUERY frames answered so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// Serves one connection until the peer closes it or sends something that is not a v3-v5 request.
fn serve(mut stream: TcpStream, queries: &AtomicUsize) {
    let mut header = [0u8; 9];
    while stream.read_exact(&mut header).is_ok() {
        let [version, _flags, s0, s1, opcode, l0, l1, l2, l3] = header;
        let stream_id = [s0, s1];
        let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        if len > MAX_BODY {
            return;
        }
        let mut body = vec![0u8; len];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        let (reply_version, opcode, reply) = if version != 4 {
            // What Cassandra answers to a version it does not speak: the driver retries lower.
            let message = format!(
                "Invalid or unsupported protocol version ({version}); supported versions are \
                 (3/v3, 4/v4)"
            );
            (version & 0x7f, ERROR, error(0x000A, &message))
        } else {
            match opcode {
                OPTIONS => (4, SUPPORTED, supported()),
                STARTUP | REGISTER => (4, READY, Vec::new()),
                QUERY => {
                    queries.fetch_add(1, Ordering::SeqCst);
                    let (op, reply) = query(&body);
                    (4, op, reply)
                }
                other => (
                    4,
                    ERROR,
                    error(0x000A, &format!("the stub does not do opcode {other:#04x}")),
                ),
            }
        };
        let mut frame = vec![0x80 | reply_version, 0, stream_id[0], stream_id[1], opcode];
        frame.extend_from_slice(&(reply.len() as u32).to_be_bytes());
        frame.extend_from_slice(&reply);
        if stream.write_all(&frame).is_err() {
            return;
        }
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn error(code: u32, message: &str) -> Vec<u8> {
    let mut out = code.to_be_bytes().to_vec();
    string(&mut out, message);
    out
}

/// SUPPORTED: a [string multimap].
fn supported() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&2u16.to_be_bytes());
    string(&mut out, "CQL_VERSION");
    out.extend_from_slice(&1u16.to_be_bytes());
    string(&mut out, "3.4.6");
    string(&mut out, "COMPRESSION");
    out.extend_from_slice(&0u16.to_be_bytes());
    out
}

/// The answer to a QUERY body ([long string] query, then options the stub ignores).
fn query(body: &[u8]) -> (u8, Vec<u8>) {
    let text = body
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .and_then(|n| body.get(4..4 + n))
        .map(|q| String::from_utf8_lossy(q).into_owned())
        .unwrap_or_default();
    let lower = text.to_ascii_lowercase();
    let Some((columns, table)) = lower
        .strip_prefix("select ")
        .and_then(|rest| rest.split_once(" from "))
    else {
        return (
            ERROR,
            error(0x2200, &format!("the stub only runs SELECT: {text}")),
        );
    };
    let table = table.split_whitespace().next().unwrap_or_default();
    let (name, rows) = match table {
        "system.local" => ("local", 1),
        "system.peers" => ("peers", 0),
        "system.peers_v2" => ("peers_v2", 0),
        _ => return (ERROR, error(0x2200, &format!("unconfigured table {table}"))),
    };
    let columns: Vec<&str> = if columns.trim() == "*" {
        LOCAL_COLUMNS.iter().map(|(c, _)| *c).collect()
    } else {
        columns.split(',').map(str::trim).collect()
    };
    (RESULT, rows_result(name, &columns, rows))
}

/// The columns of `SELECT * FROM system.local` the driver reads.
const LOCAL_COLUMNS: &[(&str, Value)] = &[
    ("key", Value::Text("local")),
    ("host_id", Value::Uuid),
    ("cluster_name", Value::Text("Stub Cluster")),
    ("data_center", Value::Text("dc1")),
    ("rack", Value::Text("rack1")),
    (
        "partitioner",
        Value::Text("org.apache.cassandra.dht.Murmur3Partitioner"),
    ),
    ("release_version", Value::Text(RELEASE_VERSION)),
    ("schema_version", Value::Uuid),
    ("rpc_address", Value::Inet),
    ("broadcast_address", Value::Inet),
    ("listen_address", Value::Inet),
    ("native_protocol_version", Value::Text("4")),
    ("cql_version", Value::Text("3.4.6")),
    ("tokens", Value::TextSet("-9223372036854775808")),
];

#[derive(Clone, Copy)]
enum Value {
    Text(&'static str),
    Uuid,
    Inet,
    Int(i32),
    TextSet(&'static str),
}

impl Value {
    /// The value (and type) of a column of the driver's queries; unknown columns are text.
    fn of(column: &str) -> Self {
        match column {
            "peer" | "native_address" | "preferred_ip" => Self::Inet,
            "peer_port" | "native_port" => Self::Int(9042),
            c => LOCAL_COLUMNS
                .iter()
                .find(|(name, _)| *name == c)
                .map_or(Self::Text(""), |(_, v)| *v),
        }
    }

    /// The [option] of its type.
    fn write_type(self, out: &mut Vec<u8>) {
        match self {
            Self::Text(_) => out.extend_from_slice(&0x000Du16.to_be_bytes()),
            Self::Uuid => out.extend_from_slice(&0x000Cu16.to_be_bytes()),
            Self::Inet => out.extend_from_slice(&0x0010u16.to_be_bytes()),
            Self::Int(_) => out.extend_from_slice(&0x0009u16.to_be_bytes()),
            Self::TextSet(_) => {
                out.extend_from_slice(&0x0022u16.to_be_bytes());
                out.extend_from_slice(&0x000Du16.to_be_bytes());
            }
        }
    }

    /// The [bytes] of the value.
    fn write(self, out: &mut Vec<u8>) {
        let bytes: Vec<u8> = match self {
            Self::Text(s) => s.as_bytes().to_vec(),
            Self::Uuid => vec![0x5e; 16],
            Self::Inet => vec![127, 0, 0, 1],
            Self::Int(i) => i.to_be_bytes().to_vec(),
            Self::TextSet(s) => {
                let mut set = 1i32.to_be_bytes().to_vec();
                set.extend_from_slice(&(s.len() as i32).to_be_bytes());
                set.extend_from_slice(s.as_bytes());
                set
            }
        };
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
}

/// RESULT kind Rows: global table spec, the columns, `rows` copies of the one row.
fn rows_result(table: &str, columns: &[&str], rows: usize) -> Vec<u8> {
    let mut out = 2i32.to_be_bytes().to_vec();
    out.extend_from_slice(&1i32.to_be_bytes()); // flags: Global_tables_spec
    out.extend_from_slice(&(columns.len() as i32).to_be_bytes());
    string(&mut out, "system");
    string(&mut out, table);
    for column in columns {
        string(&mut out, column);
        Value::of(column).write_type(&mut out);
    }
    out.extend_from_slice(&(rows as i32).to_be_bytes());
    for _ in 0..rows {
        for column in columns {
            Value::of(column).write(&mut out);
        }
    }
    out
}
