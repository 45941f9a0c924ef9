//! A minimal blocking HTTP/1.1 client for the dispatcher's API in tests:
//! one request per connection, chunked bodies decoded.

use std::io::{Read, Write};
use std::time::Duration;

/// A request with an empty body to `url` (`http://host:port/path`):
/// (status, body). Panics if the server cannot be reached.
pub fn request(method: &str, url: &str) -> (u16, String) {
    try_request(method, url).expect("connect to the dispatcher")
}

/// [`request`], or the error when the server cannot be reached or the
/// connection breaks (a dispatcher that is restarting).
pub fn try_request(method: &str, url: &str) -> std::io::Result<(u16, String)> {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// [`request`], the body parsed as JSON (`Null` when it is not).
pub fn json(method: &str, url: &str) -> (u16, serde_json::Value) {
    let (status, body) = request(method, url);
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
