//! A local git host over smart HTTP that requires HTTP Basic authentication,
//! to prove that components fetch private repositories with a token.
//!
//! Requests are answered by `git http-backend` (the CGI program git ships);
//! this module is the small HTTP/1.1 server in front of it: one thread
//! accepting, a thread per connection, one request per connection
//! (`Connection: close`), which both git and libgit2 cope with.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The realm of the `WWW-Authenticate` challenge.
const REALM: &str = "warren-test";

/// Where Debian and most distributions install the CGI program.
const DEFAULT_BACKEND: &str = "/usr/lib/git-core/git-http-backend";

/// How long a connection may stay silent before it is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The most header bytes a request may carry.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How long to wait for the client to close after the response (a
/// lingering close, so unread request bytes do not turn into a reset that
/// loses the response).
const LINGER: Duration = Duration::from_secs(1);

/// A running git host; stops accepting when dropped.
pub struct GitHttpServer {
    port: u16,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    accept: Option<JoinHandle<()>>,
}

/// Requests answered so far.
#[derive(Default)]
struct Counts {
    authorized: AtomicUsize,
    refused: AtomicUsize,
}

/// What every connection thread needs.
struct Config {
    root: PathBuf,
    backend: PathBuf,
    username: String,
    /// `username:token`, as the decoded Basic credentials must read.
    expected: Vec<u8>,
    counts: Arc<Counts>,
}

impl GitHttpServer {
    /// Serves the bare repositories under `root` (`<root>/<name>.git`) on
    /// 127.0.0.1 (a free port), answering only requests with
    /// `Authorization: Basic base64(username:token)`; others get 401 with
    /// `WWW-Authenticate: Basic realm="warren-test"`.
    pub fn start(root: &Path, username: &str, token: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the git HTTP server");
        let port = listener
            .local_addr()
            .expect("git HTTP server address")
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let config = Arc::new(Config {
            root: root.to_path_buf(),
            backend: http_backend(),
            username: username.to_owned(),
            expected: format!("{username}:{token}").into_bytes(),
            counts: Arc::clone(&counts),
        });
        let accept = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("git-http-{port}"))
                .spawn(move || accept_loop(&listener, &stop, &config))
                .expect("spawn the git HTTP server")
        };
        Self {
            port,
            stop,
            counts,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT/<name>.git`
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}.git", self.port)
    }

    /// Requests answered after authentication so far.
    pub fn authorized(&self) -> usize {
        self.counts.authorized.load(Ordering::SeqCst)
    }

    /// Requests refused with 401 so far.
    pub fn refused(&self) -> usize {
        self.counts.refused.load(Ordering::SeqCst)
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblocks `accept`, which then sees the flag; if the connection
        // fails the thread is left to the process rather than hanging here.
        if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && let Some(accept) = self.accept.take()
        {
            let _ = accept.join();
        }
    }
}

/// The CGI program: the usual place, else next to `git --exec-path`.
fn http_backend() -> PathBuf {
    let default = PathBuf::from(DEFAULT_BACKEND);
    if default.exists() {
        return default;
    }
    let output = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("run git --exec-path");
    assert!(output.status.success(), "git --exec-path failed");
    let exec_path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let backend = Path::new(&exec_path).join("git-http-backend");
    assert!(backend.exists(), "no git-http-backend in {exec_path}");
    backend
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, config: &Arc<Config>) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let config = Arc::clone(config);
        // A failed spawn drops the connection; the client sees it closed.
        let _ = std::thread::Builder::new()
            .name("git-http-conn".to_owned())
            .spawn(move || serve(stream, &config));
    }
}

/// A parsed request; the body is fully read (chunks decoded).
struct Request {
    method: String,
    target: String,
    /// Names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Answers one request on `stream`, then closes it. IO errors end the
/// connection quietly: a client that goes away is not the server's failure.
fn serve(stream: TcpStream, config: &Config) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let _ = answer(&mut reader, &mut writer, config);
    let _ = writer.flush();
    linger(&mut reader, &writer);
}

/// Shuts our side down and reads until the client closes (bounded), so the
/// response is not lost to a reset.
fn linger(reader: &mut BufReader<TcpStream>, writer: &TcpStream) {
    if writer.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let _ = writer.set_read_timeout(Some(LINGER));
    let mut sink = [0u8; 4096];
    while Instant::now() < deadline {
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn answer(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    config: &Config,
) -> std::io::Result<()> {
    let Some(mut request) = read_head(reader)? else {
        return respond(writer, "400 Bad Request", &[], b"bad request\n");
    };
    let authorized = request
        .header("authorization")
        .and_then(basic_credentials)
        .is_some_and(|credentials| credentials == config.expected);
    let expects_continue = request
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if !authorized {
        // Without `Expect: 100-continue` the body is on its way: read it so
        // closing does not reset the connection under the response.
        if !expects_continue {
            request.body = read_body(reader, &request)?;
        }
        config.counts.refused.fetch_add(1, Ordering::SeqCst);
        let challenge = format!("Basic realm=\"{REALM}\"");
        return respond(
            writer,
            "401 Unauthorized",
            &[
                ("WWW-Authenticate".to_owned(), challenge),
                ("Content-Type".to_owned(), "text/plain".to_owned()),
            ],
            b"authentication required\n",
        );
    }
    if expects_continue {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        writer.flush()?;
    }
    request.body = read_body(reader, &request)?;
    config.counts.authorized.fetch_add(1, Ordering::SeqCst);
    match run_cgi(config, &request) {
        Ok((status, headers, body)) => respond(writer, &status, &headers, &body),
        Err(error) => respond(
            writer,
            "500 Internal Server Error",
            &[("Content-Type".to_owned(), "text/plain".to_owned())],
            format!("git http-backend: {error:#}\n").as_bytes(),
        ),
    }
}

/// Reads one line (without the line ending); `None` at end of stream.
fn read_line(reader: &mut impl BufRead, budget: &mut usize) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let limit = u64::try_from(*budget).unwrap_or(u64::MAX);
    let read = reader.by_ref().take(limit).read_until(b'\n', &mut line)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        // Over the budget (or cut off): not a request we answer.
        return Ok(None);
    }
    *budget -= read;
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// The request line and headers; `None` if malformed or cut off.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<Request>> {
    let mut budget = MAX_HEADER_BYTES;
    let Some(line) = read_line(reader, &mut budget)? else {
        return Ok(None);
    };
    let mut parts = line.split_ascii_whitespace();
    let (Some(method), Some(target), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Ok(None);
    };
    let (method, target) = (method.to_owned(), target.to_owned());
    let mut headers = Vec::new();
    loop {
        let Some(line) = read_line(reader, &mut budget)? else {
            return Ok(None);
        };
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Ok(None);
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(Some(Request {
        method,
        target,
        headers,
        body: Vec::new(),
    }))
}

/// The body by `Transfer-Encoding: chunked` (decoded) or `Content-Length`.
fn read_body(reader: &mut impl BufRead, request: &Request) -> std::io::Result<Vec<u8>> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut body = Vec::new();
        let mut budget = MAX_HEADER_BYTES;
        loop {
            let line = read_line(reader, &mut budget)?.ok_or_else(|| invalid("chunk size"))?;
            budget = MAX_HEADER_BYTES;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| invalid("chunk size"))?;
            if size == 0 {
                // Trailers, up to the blank line.
                while let Some(line) = read_line(reader, &mut budget)? {
                    if line.is_empty() {
                        break;
                    }
                }
                return Ok(body);
            }
            // Read as it comes, not allocated up front from the size line.
            let limit = u64::try_from(size).map_err(|_| invalid("chunk size"))?;
            if reader.by_ref().take(limit).read_to_end(&mut body)? != size {
                return Err(invalid("chunk cut off"));
            }
            let end = read_line(reader, &mut budget)?.ok_or_else(|| invalid("chunk end"))?;
            if !end.is_empty() {
                return Err(invalid("chunk end"));
            }
        }
    }
    let length = match request.header("content-length") {
        Some(length) => length
            .parse::<u64>()
            .map_err(|_| invalid("content length"))?,
        None => 0,
    };
    let mut body = Vec::new();
    reader.by_ref().take(length).read_to_end(&mut body)?;
    if u64::try_from(body.len()).ok() != Some(length) {
        return Err(invalid("body cut off"));
    }
    Ok(body)
}

/// The decoded `user:password` of an `Authorization: Basic …` value.
fn basic_credentials(value: &str) -> Option<Vec<u8>> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64_decode(encoded.trim())
}

/// Standard base64 (`+/`, `=` padding optional); `None` if malformed.
fn base64_decode(encoded: &str) -> Option<Vec<u8>> {
    let data = encoded.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    let mut bits: u32 = 0;
    let mut count = 0;
    for &c in data {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push(u8::try_from((bits >> count) & 0xff).ok()?);
        }
    }
    // A lone trailing sextet cannot encode a byte.
    (count < 6).then_some(out)
}

/// `%XX` escapes decoded, as CGI's `PATH_INFO` is.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

type Response = (String, Vec<(String, String)>, Vec<u8>);

/// Runs `git http-backend` for `request`; its status, headers and body.
fn run_cgi(config: &Config, request: &Request) -> anyhow::Result<Response> {
    let target = match request.target.strip_prefix("http://") {
        // Absolute form: keep the path.
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => request.target.as_str(),
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut command = Command::new(&config.backend);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &config.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", &request.method)
        .env("PATH_INFO", percent_decode(path))
        .env("QUERY_STRING", query)
        .env("REMOTE_USER", &config.username)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", request.body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(content_type) = request.header("content-type") {
        command.env("CONTENT_TYPE", content_type);
    }
    if let Some(encoding) = request.header("content-encoding") {
        command.env("HTTP_CONTENT_ENCODING", encoding);
    }
    if let Some(protocol) = request.header("git-protocol") {
        command
            .env("GIT_PROTOCOL", protocol)
            .env("HTTP_GIT_PROTOCOL", protocol);
    }
    let mut child = command.spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    // Written from another thread: the CGI may answer before it has read
    // everything, and a full pipe either way must not deadlock.
    let output = std::thread::scope(|scope| {
        scope.spawn(move || {
            // The CGI may exit without reading it all; that is its call.
            let _ = stdin.write_all(&request.body);
        });
        child.wait_with_output()
    })?;
    if !output.stderr.is_empty() {
        eprintln!(
            "git-http-backend {} {}: {}",
            request.method,
            request.target,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    if output.stdout.is_empty() {
        anyhow::bail!(
            "no output ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    parse_cgi(&output.stdout)
}

/// Splits CGI output into status, headers and body.
fn parse_cgi(stdout: &[u8]) -> anyhow::Result<Response> {
    let crlf = find(stdout, b"\r\n\r\n").map(|i| (i, 4));
    let lf = find(stdout, b"\n\n").map(|i| (i, 2));
    let (end, separator) = match (crlf, lf) {
        (Some(a), Some(b)) => {
            if a.0 <= b.0 {
                a
            } else {
                b
            }
        }
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => anyhow::bail!("no blank line after the CGI headers"),
    };
    let head = String::from_utf8_lossy(&stdout[..end]);
    let body = stdout[end + separator..].to_vec();
    let mut status = "200 OK".to_owned();
    let mut headers = Vec::new();
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("status") {
            value.clone_into(&mut status);
        } else if !["content-length", "connection", "transfer-encoding"]
            .iter()
            .any(|skip| name.eq_ignore_ascii_case(skip))
        {
            headers.push((name.to_owned(), value.to_owned()));
        }
    }
    Ok((status, headers, body))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes a whole response with `Content-Length` and `Connection: close`.
fn respond(
    writer: &mut impl Write,
    status: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    writer.write_all(head.as_bytes())?;
    writer.write_all(body)?;
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::{Cred, ErrorCode, FetchOptions, Oid, RemoteCallbacks, Repository, Signature};
    use std::cell::Cell;

    const USER: &str = "warren";
    const TOKEN: &str = "s3cret-t0ken";

    /// `<root>/x.git` with one commit on `main` (HEAD); its sha.
    fn bare_repo(root: &Path) -> Oid {
        let repo = Repository::init_bare(root.join("x.git")).expect("init bare");
        repo.set_head("refs/heads/main").expect("HEAD -> main");
        let blob = repo.blob(b"hello over http\n").expect("blob");
        let mut tree = repo.treebuilder(None).expect("treebuilder");
        tree.insert("README", blob, 0o100_644).expect("tree entry");
        let tree = repo.find_tree(tree.write().expect("tree")).expect("tree");
        let signature = Signature::now("Warren Test", "test@warren.invalid").expect("signature");
        repo.commit(
            Some("refs/heads/main"),
            &signature,
            &signature,
            "first",
            &tree,
            &[],
        )
        .expect("commit")
    }

    /// `git clone`, with no credential helper, prompt or user config.
    fn git_clone(url: &str, dest: &Path, home: &Path) -> std::process::Output {
        Command::new("git")
            .args(["-c", "credential.helper=", "clone", "--quiet", url])
            .arg(dest)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", home)
            .env_remove("GIT_ASKPASS")
            .env_remove("SSH_ASKPASS")
            .output()
            .expect("run git clone")
    }

    /// A libgit2 fetch of every branch with `token`, giving up after the
    /// first credentials are refused; the result and the callback's calls.
    fn libgit2_fetch(url: &str, dest: &Path, token: &str) -> (Result<(), git2::Error>, usize) {
        let repo = Repository::init_bare(dest).expect("init bare");
        let calls = Cell::new(0);
        let result = {
            let mut callbacks = RemoteCallbacks::new();
            callbacks.credentials(|_url, _username, _allowed| {
                calls.set(calls.get() + 1);
                if calls.get() > 1 {
                    return Err(git2::Error::new(
                        ErrorCode::Auth,
                        git2::ErrorClass::Http,
                        "credentials refused",
                    ));
                }
                Cred::userpass_plaintext(USER, token)
            });
            let mut options = FetchOptions::new();
            options.remote_callbacks(callbacks);
            let mut remote = repo.remote_anonymous(url).expect("remote");
            remote.fetch(&["+refs/heads/*:refs/heads/*"], Some(&mut options), None)
        };
        let result = result.map(|()| {
            let tip = repo.refname_to_id("refs/heads/main").expect("fetched main");
            assert!(repo.find_commit(tip).is_ok());
        });
        (result, calls.get())
    }

    #[test]
    fn base64_decodes() {
        assert_eq!(base64_decode("d2FycmVuOnRva2Vu").unwrap(), b"warren:token");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("Y").is_none());
        assert!(base64_decode("a*b=").is_none());
    }

    #[test]
    fn git_http_requires_the_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("repos");
        std::fs::create_dir(&root).expect("repos dir");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("home dir");
        let sha = bare_repo(&root);
        let server = GitHttpServer::start(&root, USER, TOKEN);
        let url = server.url("x");
        assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("/x.git"));

        // 1. No credentials: refused.
        let output = git_clone(&url, &dir.path().join("anonymous"), &home);
        assert!(
            !output.status.success(),
            "anonymous clone succeeded: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(server.refused() >= 1);
        assert_eq!(server.authorized(), 0);

        // 2. Credentials in the URL: cloned, with the commit.
        let with_token = url.replacen("http://", &format!("http://{USER}:{TOKEN}@"), 1);
        let cloned = dir.path().join("cloned");
        let output = git_clone(&with_token, &cloned, &home);
        assert!(
            output.status.success(),
            "clone with the token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let clone = Repository::open(&cloned).expect("open the clone");
        assert_eq!(clone.head().expect("HEAD").target(), Some(sha));
        assert_eq!(
            std::fs::read_to_string(cloned.join("README")).expect("README"),
            "hello over http\n"
        );
        assert!(server.authorized() >= 2);

        // 3. libgit2 with the token from a credentials callback.
        let (result, calls) = libgit2_fetch(&url, &dir.path().join("fetched.git"), TOKEN);
        result.expect("libgit2 fetch with the token");
        assert_eq!(calls, 1);
        let fetched = Repository::open_bare(dir.path().join("fetched.git")).expect("open");
        assert_eq!(fetched.refname_to_id("refs/heads/main").ok(), Some(sha));

        // ... and with a wrong token: refused, never answered.
        let (authorized, refused) = (server.authorized(), server.refused());
        let (result, calls) = libgit2_fetch(&url, &dir.path().join("wrong.git"), "wrong");
        let error = result.expect_err("libgit2 fetch with a wrong token");
        assert_eq!(error.code(), ErrorCode::Auth, "{error}");
        assert_eq!(calls, 2, "the wrong token was tried once: {error}");
        assert_eq!(server.authorized(), authorized);
        assert!(server.refused() >= refused + 2);

        drop(server);
    }
}
