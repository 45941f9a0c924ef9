//! A TCP proxy between one component and the broker that can stop
//! forwarding without closing anything: a network partition, as a dead
//! cable or a lost route looks to both ends (no FIN, no RST, just silence).

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Bytes read per chunk; AMQP frames are small.
const CHUNK_BYTES: usize = 16 * 1024;

/// A running proxy; stops when dropped.
pub struct Proxy {
    port: u16,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free local port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, upstream, cut_rx.clone()));
            }
        });
        Self { port, cut, task }
    }

    /// The local port components connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker URL through this proxy (guest/guest, default vhost).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops forwarding in both directions; connections stay open and new
    /// ones are accepted but get nowhere.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards again (what was held back flows, closes are passed on).
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_while_cut(cut: &mut watch::Receiver<bool>) {
    while *cut.borrow_and_update() {
        if cut.changed().await.is_err() {
            return;
        }
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    wait_while_cut(&mut cut).await;
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(client_read, server_write, cut.clone()),
        pump(server_read, client_write, cut),
    );
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buffer = vec![0; CHUNK_BYTES];
    loop {
        let read = from.read(&mut buffer).await.unwrap_or(0);
        // Whatever arrived during a cut (data or the end of the stream) is
        // held back until the path is restored.
        wait_while_cut(&mut cut).await;
        if read == 0 || to.write_all(&buffer[..read]).await.is_err() {
            let _ = to.shutdown().await;
            return;
        }
    }
}
