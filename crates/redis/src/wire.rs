//! One Redis connection as an I/O-free machine: requests in, bytes out; bytes in, replies out.
//!
//! [`Wire`] encodes commands (RESP2) into an output buffer the driver writes, parses whatever
//! the driver read, and completes the requests in order (Redis answers a connection's
//! requests in the order it got them). It owns no socket, spawns nothing and reads no clock:
//! the driver passes the time in. A request's answer is a [`Reply`] future; dropping it before
//! the answer only discards the answer.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use distlock_core::sync::lock;
use fred::error::{Error, ErrorKind};
use fred::types::Value;

/// A command argument.
pub enum Arg<'a> {
    Bytes(&'a [u8]),
    Int(i64),
}

/// The machine of one connection.
#[derive(Default)]
pub struct Wire {
    out: Vec<u8>,
    input: Vec<u8>,
    pending: VecDeque<(Instant, Arc<Slot>)>,
}

impl Wire {
    /// Queues `args` as one command sent at `now`; its answer comes through the returned future.
    pub fn request(&mut self, args: &[Arg<'_>], now: Instant) -> Reply {
        encode(&mut self.out, args);
        let slot = Arc::new(Slot::default());
        self.pending.push_back((now, slot.clone()));
        Reply(slot)
    }

    /// The bytes to write; the driver drains what the socket took.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Requests sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// When the oldest unanswered request was sent.
    pub fn oldest(&self) -> Option<Instant> {
        self.pending.front().map(|p| p.0)
    }

    /// Takes in bytes read from the socket and answers every request whose reply is complete.
    /// An error is a protocol violation: the connection cannot be trusted any more.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.input.extend_from_slice(bytes);
        let mut at = 0;
        while let Some((value, used)) = parse(&self.input[at..])? {
            at += used;
            let Some((_, slot)) = self.pending.pop_front() else {
                return Err(String::from("a reply that no request asked for"));
            };
            slot.complete(value);
        }
        self.input.drain(..at);
        Ok(())
    }

    /// Fails every unanswered request with `error` (the connection is gone).
    pub fn fail_all(&mut self, error: &Error) {
        for (_, slot) in self.pending.drain(..) {
            slot.complete(Err(error.clone()));
        }
        self.out.clear();
        self.input.clear();
    }
}

/// A request's answer once it came, and who waits for it.
type SlotState = (Option<Result<Value, Error>>, Option<Waker>);

#[derive(Default)]
pub struct Slot {
    state: Mutex<SlotState>,
}

impl Slot {
    fn complete(&self, value: Result<Value, Error>) {
        let waker = {
            let mut s = lock(&self.state);
            s.0 = Some(value);
            s.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The answer to one request.
pub struct Reply(Arc<Slot>);

impl Future for Reply {
    type Output = Result<Value, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = lock(&self.0.state);
        match s.0.take() {
            Some(v) => Poll::Ready(v),
            None => {
                if !s.1.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.1 = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// Appends `args` as a RESP2 array of bulk strings.
pub fn encode(out: &mut Vec<u8>, args: &[Arg<'_>]) {
    let mut num = itoa_buf();
    out.push(b'*');
    out.extend_from_slice(fmt_int(&mut num, args.len() as i64));
    out.extend_from_slice(b"\r\n");
    for a in args {
        let mut digits = itoa_buf();
        let bytes: &[u8] = match a {
            Arg::Bytes(b) => b,
            Arg::Int(i) => fmt_int(&mut digits, *i),
        };
        let mut len = itoa_buf();
        out.push(b'$');
        out.extend_from_slice(fmt_int(&mut len, bytes.len() as i64));
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }
}

fn itoa_buf() -> [u8; 20] {
    [0; 20]
}

/// Formats `n` in decimal into `buf`, returning the digits.
fn fmt_int(buf: &mut [u8; 20], n: i64) -> &[u8] {
    let mut i = buf.len();
    let neg = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// Parses one RESP2 reply from the start of `buf`: the value (a server error as `Err`) and the
/// bytes it used, or `None` when it is not complete yet.
#[allow(clippy::type_complexity)]
pub fn parse(buf: &[u8]) -> Result<Option<(Result<Value, Error>, usize)>, String> {
    let Some(line_end) = find_crlf(buf) else {
        return Ok(None);
    };
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let line = &buf[1..line_end];
    let after = line_end + 2;
    let text =
        || std::str::from_utf8(line).map_err(|_| String::from("a reply line that is not UTF-8"));
    let int = || -> Result<i64, String> {
        text()?
            .parse::<i64>()
            .map_err(|_| format!("a malformed number {:?}", String::from_utf8_lossy(line)))
    };
    Ok(Some(match kind {
        b'+' => (Ok(Value::String(text()?.into())), after),
        b'-' => (Err(server_error(text()?)), after),
        b':' => (Ok(Value::Integer(int()?)), after),
        b'$' => {
            let len = int()?;
            if len < 0 {
                return Ok(Some((Ok(Value::Null), after)));
            }
            let len = usize::try_from(len).map_err(|_| String::from("a bulk length too large"))?;
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            let body = &buf[after..after + len];
            let value = match std::str::from_utf8(body) {
                Ok(s) => Value::String(s.into()),
                Err(_) => Value::Bytes(body.to_vec().into()),
            };
            (Ok(value), after + len + 2)
        }
        b'*' => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Ok(Value::Null), after)));
            }
            let mut at = after;
            let mut items = Vec::with_capacity(usize::try_from(n).unwrap_or(0).min(1024));
            for _ in 0..n {
                let Some((item, used)) = parse(&buf[at..])? else {
                    return Ok(None);
                };
                at += used;
                // An error inside an array (a script's error_reply) stays an error value.
                items.push(item.unwrap_or_else(|e| Value::String(e.details().to_owned().into())));
            }
            (Ok(Value::Array(items)), at)
        }
        other => return Err(format!("an unknown reply type byte {other:#04x}")),
    }))
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// A server's error reply as the error fred would have made of it.
fn server_error(text: &str) -> Error {
    let kind = match text.split_whitespace().next().unwrap_or("") {
        "NOAUTH" | "WRONGPASS" => ErrorKind::Auth,
        "WRONGTYPE" => ErrorKind::InvalidArgument,
        "MOVED" | "ASK" | "CLUSTERDOWN" => ErrorKind::Cluster,
        _ => ErrorKind::Unknown,
    };
    Error::new(kind, text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop_poll(r: &mut Reply) -> Poll<Result<Value, Error>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(r).poll(&mut cx)
    }

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut out = Vec::new();
        encode(
            &mut out,
            &[
                Arg::Bytes(b"SET"),
                Arg::Bytes(b"k"),
                Arg::Int(-42),
                Arg::Int(0),
            ],
        );
        assert_eq!(
            out,
            b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n-42\r\n$1\r\n0\r\n"
        );
    }

    #[test]
    fn parses_every_reply_type_and_waits_for_partial_ones() {
        let whole = b"*3\r\n:1\r\n$3\r\nabc\r\n$-1\r\n";
        for cut in 0..whole.len() {
            assert!(parse(&whole[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let (v, used) = parse(whole).unwrap().unwrap();
        assert_eq!(used, whole.len());
        assert_eq!(
            v.unwrap(),
            Value::Array(vec![
                Value::Integer(1),
                Value::String("abc".into()),
                Value::Null
            ])
        );
        let (e, _) = parse(b"-NOSCRIPT No matching script\r\n").unwrap().unwrap();
        assert!(e.unwrap_err().details().starts_with("NOSCRIPT"));
        let (e, _) = parse(b"-WRONGPASS invalid\r\n").unwrap().unwrap();
        assert_eq!(*e.unwrap_err().kind(), ErrorKind::Auth);
        assert!(parse(b"?what\r\n").is_err());
    }

    #[test]
    fn answers_requests_in_order_across_split_reads() {
        let now = Instant::now();
        let mut w = Wire::default();
        let mut a = w.request(&[Arg::Bytes(b"PING")], now);
        let mut b = w.request(&[Arg::Bytes(b"GET"), Arg::Bytes(b"x")], now);
        assert_eq!(w.in_flight(), 2);
        assert_eq!(w.oldest(), Some(now));
        assert_eq!(
            w.output().as_slice(),
            b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nx\r\n"
        );
        w.feed(b"+PONG\r\n$5\r\nhel").unwrap();
        assert_eq!(
            noop_poll(&mut a),
            Poll::Ready(Ok(Value::String("PONG".into())))
        );
        assert!(noop_poll(&mut b).is_pending());
        w.feed(b"lo\r\n").unwrap();
        assert_eq!(
            noop_poll(&mut b),
            Poll::Ready(Ok(Value::String("hello".into())))
        );
        assert_eq!(w.in_flight(), 0);
        assert!(w.feed(b":1\r\n").is_err(), "a reply nobody asked for");
    }

    #[test]
    fn a_dropped_request_does_not_shift_the_others_and_failures_reach_everyone() {
        let now = Instant::now();
        let mut w = Wire::default();
        drop(w.request(&[Arg::Bytes(b"A")], now));
        let mut b = w.request(&[Arg::Bytes(b"B")], now);
        let mut c = w.request(&[Arg::Bytes(b"C")], now);
        w.feed(b":1\r\n:2\r\n").unwrap();
        assert_eq!(noop_poll(&mut b), Poll::Ready(Ok(Value::Integer(2))));
        w.fail_all(&Error::new(ErrorKind::IO, "gone"));
        match noop_poll(&mut c) {
            Poll::Ready(Err(e)) => assert_eq!(*e.kind(), ErrorKind::IO),
            _ => panic!("a failed connection must fail its requests"),
        }
        assert_eq!(w.in_flight(), 0);
    }
}
