//! Delivery end to end: `SmtpMailer` against a real SMTP server on loopback (`mailin-embedded`), and
//! `MaildirMailer` into a temporary Maildir. What arrives is parsed back with `mail-parser`, as a mail reader would.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mail_parser::{MessageParser, MimeHeaders};
use mailin_embedded::{Handler, Response, Server, SslConfig, response};
use rampart_notify::{
    DeviceInfo, EmailMessage, MailError, MaildirMailer, Mailer, Notification, SmtpConfig, SmtpMailer, SmtpTls,
    render_email,
};

const FROM: &str = "Rampart Security <security@rampart.example>";
const T: u64 = 1_767_323_045_000_000_000;
/// A recipient the test server refuses for good.
const UNKNOWN: &str = "nobody@example.com";
/// A recipient the test server asks to try again later.
const GREYLISTED: &str = "later@example.com";

/// One message as the server received it.
#[derive(Debug, Clone)]
struct Received {
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

/// The server's handler: one clone per connection, all writing to the same list.
#[derive(Clone, Default)]
struct Recorder {
    received: Arc<Mutex<Vec<Received>>>,
    current: Option<Received>,
}

impl Handler for Recorder {
    fn rcpt(&mut self, to: &str) -> Response {
        match to {
            UNKNOWN => response::NO_MAILBOX,
            GREYLISTED => Response::custom(451, "Greylisted, try again later".to_owned()),
            _ => response::OK,
        }
    }

    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.current = Some(Received { from: from.to_owned(), to: to.to_vec(), data: Vec::new() });
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> io::Result<()> {
        if let Some(current) = &mut self.current {
            current.data.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        if let Some(done) = self.current.take() {
            self.received.lock().unwrap().push(done);
        }
        response::OK
    }
}

/// Starts an SMTP server on 127.0.0.1 with an ephemeral port. The listener is bound before this returns, so a
/// client can connect at once; the server thread lives until the test process ends.
fn start_server() -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let recorder = Recorder::default();
    let received = Arc::clone(&recorder.received);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut server = Server::new(recorder);
    server.with_name("mx.test").with_ssl(SslConfig::None).unwrap().with_num_threads(2).with_tcp_listener(listener);
    std::thread::spawn(move || {
        // The tests that use this server fail on their own if it stops; this says why.
        if let Err(err) = server.serve() {
            eprintln!("the test SMTP server stopped: {err}");
        }
    });
    (addr, received)
}

fn mailer(addr: SocketAddr, timeout_s: u64) -> Arc<dyn Mailer> {
    let config = SmtpConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        tls: SmtpTls::None,
        username: None,
        password: None,
        timeout_s,
    };
    Arc::new(SmtpMailer::new(&config).unwrap())
}

fn sign_in_email(to: &str) -> EmailMessage {
    let n = Notification::SignInNewDevice {
        device: DeviceInfo {
            user_agent: "<script>alert(1)</script> Firefox".to_owned(),
            ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
            country: Some("Portugal".to_owned()),
        },
    };
    render_email(&n, Some("Blue-Falcon_42"), to, T)
}

/// Checks a delivered RFC 5322 message against what was rendered.
fn assert_delivered(raw: &[u8], rendered: &EmailMessage) {
    let parsed = MessageParser::default().parse(raw).expect("a parseable message");
    let from = parsed.from().and_then(|a| a.first()).expect("From");
    assert_eq!(from.address(), Some("security@rampart.example"));
    assert_eq!(from.name(), Some("Rampart Security"));
    let to = parsed.to().and_then(|a| a.first()).expect("To");
    assert_eq!(to.address(), Some(rendered.to.as_str()));
    assert_eq!(parsed.subject(), Some(rendered.subject.as_str()));
    let message_id = parsed.message_id().expect("Message-ID");
    assert!(message_id.ends_with("@rampart.example"), "{message_id}");
    assert!(parsed.date().is_some());
    assert_eq!(parsed.content_type().map(|c| (c.ctype(), c.subtype())), Some(("multipart", Some("alternative"))));

    let text = parsed.body_text(0).expect("a text part");
    assert_eq!(text.lines().next(), Some("Anti-phishing code: Blue-Falcon_42"));
    assert_eq!(text.replace("\r\n", "\n"), rendered.text_body);
    let html = parsed.body_html(0).expect("an HTML part");
    assert!(html.contains("id=\"anti-phishing-code\""));
    assert!(html.contains("Blue-Falcon_42</strong>"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; Firefox"));
    assert!(!html.contains("<script>"));
    assert_eq!(html.replace("\r\n", "\n"), rendered.html_body);
}

#[tokio::test]
async fn a_message_arrives_once_with_the_code_first() {
    let (addr, received) = start_server();
    let mailer = mailer(addr, 10);
    let msg = sign_in_email("alice@example.com");
    mailer.send(FROM, &msg).await.unwrap();

    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "exactly one message");
    assert_eq!(received[0].from, "security@rampart.example");
    assert_eq!(received[0].to, ["alice@example.com"]);
    assert_delivered(&received[0].data, &msg);
}

#[tokio::test]
async fn lines_that_start_with_a_dot_survive_the_trip() {
    // SMTP ends the data with a lone "."; the client must double a leading dot and the server undo it.
    let (addr, received) = start_server();
    let mut msg = sign_in_email("alice@example.com");
    msg.text_body = "Anti-phishing code: Blue-Falcon_42\n.\n..\n.hidden\nend\n".to_owned();
    mailer(addr, 10).send(FROM, &msg).await.unwrap();

    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    let parsed = MessageParser::default().parse(&received[0].data).unwrap();
    assert_eq!(parsed.body_text(0).unwrap().replace("\r\n", "\n"), msg.text_body);
}

#[tokio::test]
async fn several_messages_over_the_pooled_connection() {
    let (addr, received) = start_server();
    let mailer = mailer(addr, 10);
    for i in 0..3 {
        mailer.send(FROM, &sign_in_email(&format!("user{i}@example.com"))).await.unwrap();
    }
    let received = received.lock().unwrap().clone();
    let to: Vec<&str> = received.iter().map(|r| r.to[0].as_str()).collect();
    assert_eq!(to, ["user0@example.com", "user1@example.com", "user2@example.com"]);
}

#[tokio::test]
async fn a_550_is_permanent() {
    let (addr, received) = start_server();
    let err = mailer(addr, 10).send(FROM, &sign_in_email(UNKNOWN)).await.unwrap_err();
    assert!(matches!(err, MailError::Rejected { code: 550, .. }), "{err:?}");
    assert!(err.is_permanent());
    assert!(received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_451_is_transient() {
    let (addr, received) = start_server();
    let err = mailer(addr, 10).send(FROM, &sign_in_email(GREYLISTED)).await.unwrap_err();
    assert!(matches!(err, MailError::Deferred { code: 451, .. }), "{err:?}");
    assert!(!err.is_permanent());
    assert!(received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn after_a_refusal_the_next_message_goes_through() {
    let (addr, received) = start_server();
    let mailer = mailer(addr, 10);
    assert!(mailer.send(FROM, &sign_in_email(UNKNOWN)).await.is_err());
    mailer.send(FROM, &sign_in_email("alice@example.com")).await.unwrap();
    assert_eq!(received.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_bad_recipient_is_permanent_and_never_reaches_the_server() {
    let (addr, received) = start_server();
    let err = mailer(addr, 10).send(FROM, &sign_in_email("not an address")).await.unwrap_err();
    assert!(matches!(err, MailError::InvalidAddress { field: "to" }), "{err:?}");
    assert!(err.is_permanent());
    assert!(received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn connection_refused_is_transient() {
    // A port that was just free: bind it, note it, release it, so nothing listens there.
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let err = mailer(addr, 10).send(FROM, &sign_in_email("alice@example.com")).await.unwrap_err();
    assert!(matches!(err, MailError::Connection(_)), "{err:?}");
    assert!(!err.is_permanent());
}

#[tokio::test]
async fn a_silent_server_times_out_and_is_transient() {
    // The kernel completes the handshake for a listener that never accepts, so the client waits for a greeting
    // that never comes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let err = mailer(addr, 1).send(FROM, &sign_in_email("alice@example.com")).await.unwrap_err();
    assert!(matches!(err, MailError::Timeout), "{err:?}");
    assert!(!err.is_permanent());
    drop(listener);
}

/// A fresh directory under the target's temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("rampart-notify-{}", uuid_like()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A name unlikely to collide across concurrent test runs: process id and a nanosecond clock reading.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{}-{nanos}", std::process::id())
}

fn files_in(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[tokio::test]
async fn maildir_delivers_into_new() {
    let tmp = TempDir::new();
    let mailer: Arc<dyn Mailer> = Arc::new(MaildirMailer::create(tmp.0.join("Maildir")).unwrap());
    let msg = sign_in_email("alice@example.com");
    mailer.send(FROM, &msg).await.unwrap();

    let root = tmp.0.join("Maildir");
    assert!(files_in(&root.join("tmp")).is_empty(), "nothing left behind in tmp/");
    assert!(files_in(&root.join("cur")).is_empty());
    let new = files_in(&root.join("new"));
    assert_eq!(new.len(), 1);
    assert_delivered(&std::fs::read(&new[0]).unwrap(), &msg);

    mailer.send(FROM, &sign_in_email("bob@example.com")).await.unwrap();
    assert_eq!(files_in(&root.join("new")).len(), 2, "a second message gets its own file");
}

#[tokio::test]
async fn maildir_refuses_a_bad_address() {
    let tmp = TempDir::new();
    let mailer = MaildirMailer::create(&tmp.0).unwrap();
    let err = mailer.send("nobody", &sign_in_email("alice@example.com")).await.unwrap_err();
    assert!(matches!(err, MailError::InvalidAddress { field: "from" }), "{err:?}");
    assert!(files_in(&tmp.0.join("new")).is_empty());
}
