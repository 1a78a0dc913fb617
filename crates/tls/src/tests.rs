//! Real sockets on loopback: certificates from `init`, the listener, the connector.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// A server whose one answer is the caller's role as the listener saw it.
async fn start(transport: Transport) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service_for = |conn: Connection| {
        hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| async move {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("{:?}", conn.peer)))))
        })
    };
    tokio::spawn(listener::serve(listener, transport, listener::Limits::default(), service_for, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Asks the server at `addr` over `connector`; the body it answers.
async fn ask(connector: &Connector, addr: std::net::SocketAddr) -> std::io::Result<String> {
    let stream = connector.connect("127.0.0.1", addr.port()).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let req = Request::builder().uri("/").body(Full::new(Bytes::new())).expect("request");
    let answer = send.send_request(req).await.map_err(std::io::Error::other)?;
    let body = answer.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn certs() -> (tempfile::TempDir, Arc<Identity>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let created = authority::init(dir.path(), &["127.0.0.1".into()]).expect("init");
    assert!(created.files.len() >= 8, "{:?}", created.files);
    let master = Identity::load(dir.path(), Role::Master).expect("master identity");
    (dir, master)
}

#[tokio::test]
async fn callers_are_told_apart_by_their_certificates_and_plain_text_is_refused() {
    let (dir, master) = certs();
    let (addr, _stop) = start(Transport::Tls(master)).await;
    for (role, expect) in
        [(Role::Worker, "Tls(Some(Worker))"), (Role::Master, "Tls(Some(Master))"), (Role::Client, "Tls(Some(Client))")]
    {
        let id = Identity::load(dir.path(), role).expect("identity");
        assert_eq!(ask(&Connector::new(Some(id), Alpn::Http1), addr).await.expect("ask"), expect);
    }
    // A client with only the CA (and a token, elsewhere) gets in without a role.
    std::fs::remove_file(dir.path().join("client.pem")).expect("rm");
    let bare = Identity::load(dir.path(), Role::Client).expect("identity without a certificate");
    assert_eq!(ask(&Connector::new(Some(bare), Alpn::Http1), addr).await.expect("ask"), "Tls(None)");

    // Plain text gets a clear 400 and nothing else.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /v1/status HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("TLS only"), "{answer}");
    let plain = ask(&Connector::new(None, Alpn::Http1), addr).await.unwrap_or_default();
    assert!(!plain.contains("Plain"), "plain HTTP was served: {plain}");
}

#[tokio::test]
async fn certificates_of_another_ca_are_refused_both_ways() {
    let (_dir, master) = certs();
    let (addr, _stop) = start(Transport::Tls(master)).await;
    let other = tempfile::tempdir().expect("tempdir");
    authority::init(other.path(), &["127.0.0.1".into()]).expect("init");
    // A worker of another cluster cannot connect: its certificate is not of this CA, and
    // this master's certificate is not of its CA.
    let stranger = Identity::load(other.path(), Role::Worker).expect("identity");
    let refused = ask(&Connector::new(Some(stranger), Alpn::Http1), addr).await;
    assert!(refused.is_err(), "a stranger's worker got in: {refused:?}");
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("TLS"), "{message}");
}

#[tokio::test]
async fn both_transports_serve_plain_and_tls_while_a_cluster_moves_to_tls() {
    let (dir, master) = certs();
    let (addr, _stop) = start(Transport::Both(master)).await;
    assert_eq!(ask(&Connector::new(None, Alpn::Http1), addr).await.expect("plain"), "Plain");
    let worker = Identity::load(dir.path(), Role::Worker).expect("identity");
    assert_eq!(ask(&Connector::new(Some(worker), Alpn::Http1), addr).await.expect("tls"), "Tls(Some(Worker))");
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_bad_one_changes_nothing() {
    let (dir, master) = certs();
    let (addr, _stop) = start(Transport::Tls(master.clone())).await;
    let served = || async {
        let client = Identity::load(dir.path(), Role::Client).expect("identity");
        let stream = Connector::new(Some(client), Alpn::Http1).connect("127.0.0.1", addr.port()).await.expect("tls");
        match stream {
            connector::Stream::Tls(s) => s.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec(),
            connector::Stream::Plain(_) => panic!("plain"),
        }
    };
    let before = served().await;
    // Filesystems with coarse timestamps: make sure the new files look different.
    tokio::time::sleep(Duration::from_millis(20)).await;
    authority::issue(dir.path(), Role::Master, &["127.0.0.1".into()]).expect("issue");
    assert!(master.reload().expect("reload"), "the new files were not noticed");
    let after = served().await;
    assert_ne!(before, after, "the old certificate is still served");

    // A damaged key: the reload fails and the renewed certificate stays in use.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(dir.path().join("master.key"), "not a key").expect("write");
    assert!(master.reload().is_err());
    assert_eq!(served().await, after);
}

#[test]
fn init_refuses_to_replace_a_ca_and_keys_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, _) = certs();
    let again = authority::init(dir.path(), &[]);
    assert!(matches!(again, Err(TlsError::Exists { .. })), "{again:?}");
    for file in ["ca.key", "master.key", "worker.key", "client.key", "admin.token"] {
        let mode = std::fs::metadata(dir.path().join(file)).expect(file).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    let token = std::fs::read_to_string(dir.path().join("admin.token")).expect("token");
    assert_eq!(token.trim().len(), 64);
}
