//! Hostile and broken clients against a real master: what one client may send and hold is
//! bounded, every refusal is a JSON error, and the master serves everyone else throughout.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use flotilla_proto::api::JobState;

/// Sends `head` (request line and headers, without the blank line) and then `body`, ignoring a
/// write the master cut short; returns the status and body of the answer (0 and empty: the
/// connection closed without one) and how long the answer took.
fn exchange(address: &str, head: &str, body: &[u8]) -> (u16, String, Duration) {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let started = Instant::now();
    let _ = stream.write_all(format!("{head}\r\n\r\n").as_bytes());
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body, started.elapsed())
}

/// Whether the master closed `stream` (end of file or reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// On a thread: connects, sends `bytes` and nothing more; then whether the master closed the
/// connection within a minute, and how long it took.
fn stall(address: &str, bytes: &'static [u8]) -> std::thread::JoinHandle<(bool, Duration)> {
    let address = address.to_string();
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(&address).expect("connect");
        let started = Instant::now();
        stream.write_all(bytes).expect("write");
        let closed = closed_within(&mut stream, Duration::from_secs(60));
        (closed, started.elapsed())
    })
}

/// A JSON error body carries a code and a message (never plain text, never a panic page).
fn assert_json_error(status: u16, body: &str, want_status: u16, want_code: &str, mention: &str) {
    assert_eq!(status, want_status, "{body}");
    let error: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(error["code"], want_code, "{body}");
    let message = error["error"].as_str().unwrap_or_default();
    assert!(message.contains(mention), "{body}");
}

/// Invariants: a body over 1 MiB is refused with 413 (declared or streamed); JSON nested past
/// the decoder's depth limit and maps over their entry limits get 400; each of these is a JSON
/// error and creates no job. A client that sends headers too slowly, nothing at all, or an
/// HTTP/2 preface and no request, is cut off; a slow body gets 408. Connections beyond `--max-connections-per-client` are closed at
/// once while the ones held are served. A connection idle past `--idle-timeout` is closed,
/// while the worker's session (a request always in flight) stays up and runs tasks after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_bounded_and_the_master_serves_on() {
    let t = cluster(1, &[("w", 1)], &["--max-connections-per-client", "24", "--idle-timeout", "2s"]).await;
    let address = t.cluster.master_list();
    let address = address.split(',').next().expect("a master").to_string();
    let client = t.client();

    // The API's description is served, and is the one committed under docs/.
    let (status, served) = raw_http(&address, "GET", "/v1/openapi.json", &[], b"");
    assert_eq!(status, 200, "{served}");
    let served: serde_json::Value = serde_json::from_str(&served).expect("the description is JSON");
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).expect("docs");
    let committed: serde_json::Value = serde_json::from_str(&committed).expect("docs/openapi.json is JSON");
    assert_eq!(served, committed, "/v1/openapi.json differs from docs/openapi.json");

    // The slow clients run beside the rest, so their timeouts overlap.
    let slow = {
        let address = address.clone();
        std::thread::spawn(move || {
            let headers = stall(&address, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n");
            let silent = stall(&address, b"");
            // An HTTP/2 preface, then no request ever.
            let preface = stall(&address, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
            let body = exchange(
                &address,
                &format!("POST /v1/jobs HTTP/1.1\r\nHost: {address}\r\nContent-Length: 100"),
                br#"{"command": "#,
            );
            (
                headers.join().expect("slow headers"),
                silent.join().expect("silent"),
                preface.join().expect("preface"),
                body,
            )
        })
    };

    let (status, body, took) = exchange(
        &address,
        &format!("POST /v1/jobs HTTP/1.1\r\nHost: {address}\r\nContent-Length: 5000000\r\nConnection: close"),
        b"",
    );
    assert_json_error(status, &body, 413, "too_large", "larger than");
    assert!(took < Duration::from_secs(10), "refused before any body was sent ({took:?})");

    let mut chunked = Vec::new();
    for _ in 0..24 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
        chunked.extend(std::iter::repeat_n(b' ', 64 * 1024));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, body, _) = exchange(
        &address,
        &format!("POST /v1/jobs HTTP/1.1\r\nHost: {address}\r\nTransfer-Encoding: chunked\r\nConnection: close"),
        &chunked,
    );
    assert_json_error(status, &body, 413, "too_large", "larger than");

    let deep = format!(r#"{{"command": {}"x"{}}}"#, "[".repeat(5000), "]".repeat(5000));
    let (status, body) = raw_http(&address, "POST", "/v1/jobs", &[], deep.as_bytes());
    assert_json_error(status, &body, 400, "bad_request", "invalid job JSON");
    let deep = "[".repeat(100_000);
    let (status, body) = raw_http(&address, "POST", "/v1/jobs", &[], deep.as_bytes());
    assert_json_error(status, &body, 400, "bad_request", "invalid job JSON");

    let env: serde_json::Map<String, serde_json::Value> =
        (0..300).map(|i| (format!("V{i}"), serde_json::Value::from("x"))).collect();
    let wide = serde_json::json!({"command": ["true"], "env": env}).to_string();
    let (status, body) = raw_http(&address, "POST", "/v1/jobs", &[], wide.as_bytes());
    assert_json_error(status, &body, 400, "bad_request", "env has 300 entries (limit 256)");
    let long = serde_json::json!({"command": ["true"], "selector": {"zone": "z".repeat(70_000)}}).to_string();
    let (status, body) = raw_http(&address, "POST", "/v1/jobs", &[], long.as_bytes());
    assert_json_error(status, &body, 400, "bad_request", "too long");
    assert!(client.jobs(false).await.expect("jobs").is_empty(), "no refused request created a job");

    // More connections than allowed: the extra ones are closed at once, the rest are served.
    let mut held: Vec<TcpStream> = (0..30).map(|_| TcpStream::connect(&address).expect("connect")).collect();
    let mut open = Vec::new();
    let mut refused = 0;
    for mut stream in held.drain(..) {
        if closed_within(&mut stream, Duration::from_millis(500)) {
            refused += 1;
        } else {
            open.push(stream);
        }
    }
    assert!(refused >= 6, "30 connections beside the worker's: at most 24 held, {refused} refused");
    assert!(!open.is_empty(), "some of them were held");
    let first = open.first_mut().expect("held");
    first
        .write_all(format!("GET /v1/status HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").as_bytes())
        .expect("write");
    let mut answer = String::new();
    first.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let _ = first.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "a held connection is served: {answer}");
    drop(open);
    wait_until(&t, "the master serves new connections once the extra ones are gone", LONG, || async {
        client.status(false).await.is_ok()
    })
    .await;

    // A kept-alive connection with nothing in flight is closed after the idle timeout.
    let mut idle = TcpStream::connect(&address).expect("connect");
    idle.write_all(format!("GET /v1/status HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes()).expect("write");
    let answered = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(60)), "an idle connection is closed");
    let idle_for = answered.elapsed();
    assert!(idle_for >= Duration::from_millis(1500), "closed only once idle for 2 s ({idle_for:?})");

    let (
        (headers_closed, headers_took),
        (silent_closed, silent_took),
        (preface_closed, preface_took),
        (status, body, _),
    ) = slow.join().expect("slow clients");
    assert!(
        preface_closed && preface_took < Duration::from_secs(40),
        "a stalled HTTP/2 client cut off ({preface_took:?})"
    );
    assert!(headers_closed && headers_took < Duration::from_secs(40), "slow headers cut off ({headers_took:?})");
    assert!(silent_closed && silent_took < Duration::from_secs(40), "a silent client cut off ({silent_took:?})");
    assert_json_error(status, &body, 408, "timeout", "did not arrive");

    // The worker's session outlived every idle check: it still runs tasks on the same session.
    let job = client.submit(&squares_job(4, "0")).await.expect("submit").id;
    assert_eq!(wait_job(&t, &client, job, LONG).await.state, JobState::Succeeded);
    let log = std::fs::read_to_string(t.dir.path().join("logs").join("worker-w.log")).unwrap_or_default();
    assert!(!log.contains("session lost"), "the worker's session was never cut: {log}");
    let status = client.status(false).await.expect("status");
    assert_eq!(status.workers.len(), 1, "{status:?}");
}
