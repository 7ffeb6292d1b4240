//! A stand-in for Jaeger in the dashboard's browser tests: receives the mesh's
//! spans over OTLP/gRPC and shows each trace as plain text at
//! `GET /trace/<trace id>` (the path the dashboard's `--ui-trace-url` links to),
//! one span a line: `<service> <span name>`. A trace it has not received answers
//! 404. `GET /trace/<trace id>?times` adds each span's start (ms after the
//! trace's first) and duration, in order of start: where a job's time went.
//!
//!   trace-sink [OTLP address (127.0.0.1:4317)] [HTTP address (127.0.0.1:16686)]

use jobmesh_tests::otlp::Collector;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Bytes of a request head read at most.
const MAX_HEAD: usize = 8 * 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_target(false).init();
    let mut args = std::env::args().skip(1);
    let otlp = args.next().unwrap_or_else(|| "127.0.0.1:4317".to_owned());
    let web = args.next().unwrap_or_else(|| "127.0.0.1:16686".to_owned());
    let collector = Collector::default();
    let stop = CancellationToken::new();
    let receiving = tokio::spawn(
        collector
            .clone()
            .serve(TcpListener::bind(&otlp).await?, stop.clone()),
    );
    let web = TcpListener::bind(&web).await?;
    tracing::info!(%otlp, web = %web.local_addr()?, "trace sink ready");
    loop {
        tokio::select! {
            accepted = web.accept() => {
                let (stream, _) = accepted?;
                tokio::spawn(answer(stream, collector.clone()));
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    stop.cancel();
    receiving.await??;
    Ok(())
}

/// A trace's spans in order of start: `+<start ms> <duration ms> <service> <name>`.
fn timeline(id: &str, mut spans: Vec<jobmesh_tests::otlp::Received>) -> String {
    spans.sort_by_key(|s| s.start_unix_nanos);
    let first = spans.first().map_or(0, |s| s.start_unix_nanos);
    let ms = |nanos: u64| nanos as f64 / 1e6;
    let mut body = format!(
        "trace {id}: {} spans (start ms, duration ms)\n",
        spans.len()
    );
    for span in spans {
        body.push_str(&format!(
            "+{:8.3} {:8.3}  {} {}\n",
            ms(span.start_unix_nanos.saturating_sub(first)),
            ms(span.end_unix_nanos.saturating_sub(span.start_unix_nanos)),
            span.service,
            span.name
        ));
    }
    body
}

/// Answers one HTTP/1.1 request and closes the connection.
async fn answer(mut stream: TcpStream, collector: Collector) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or_default();
    let (path, times) = match path.strip_suffix("?times") {
        Some(path) => (path, true),
        None => (path, false),
    };
    let (status, body) = match path.strip_prefix("/trace/") {
        Some(id) => {
            let spans = collector.trace(id);
            if spans.is_empty() {
                (
                    "404 Not Found",
                    format!("no spans of trace {id} received\n"),
                )
            } else if times {
                ("200 OK", timeline(id, spans))
            } else {
                let mut body = format!("trace {id}: {} spans\n", spans.len());
                for span in spans {
                    body.push_str(&format!("{} {}\n", span.service, span.name));
                }
                ("200 OK", body)
            }
        }
        None => (
            "404 Not Found",
            "traces are at /trace/<trace id>\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
