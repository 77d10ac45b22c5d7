//! Newline-delimited JSON-RPC on stdin and stdout, as MCP's stdio transport defines it.
//!
//! Every line read is answered or handed on. A line that is not JSON gets a JSON-RPC
//! parse error (-32700, id null); a JSON value that is not a valid MCP message gets an
//! invalid-request error (-32600) carrying the request's id when it has one; a line
//! longer than [`MAX_LINE`] is skipped to its end and answered with -32600. In every
//! case the server goes on reading: one bad line never ends the session. Replies and
//! errors share one writer, so lines never interleave.

use std::sync::Arc;

use rmcp::RoleServer;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

/// The longest request line accepted (16 MiB): a task batch of this size is already
/// far past what one call should carry.
pub const MAX_LINE: usize = 16 << 20;

/// JSON-RPC's "Parse error".
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC's "Invalid Request".
pub const INVALID_REQUEST: i64 = -32600;

/// The stdio transport: a buffered reader and a shared, line-at-a-time writer.
pub struct Lines<R, W> {
    reader: BufReader<R>,
    writer: Arc<Mutex<W>>,
    /// The line being read; kept across calls, since `receive` may be cancelled midway.
    line: Vec<u8>,
    /// Skipping the rest of an over-long line.
    discarding: bool,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Lines<R, W> {
    /// A transport reading requests from `reader` and writing replies to `writer`.
    pub fn new(reader: R, writer: W) -> Self {
        Lines {
            reader: BufReader::new(reader),
            writer: Arc::new(Mutex::new(writer)),
            line: Vec::new(),
            discarding: false,
        }
    }
}

/// Writes one JSON-RPC line and flushes it.
async fn write_line<W: AsyncWrite + Unpin>(writer: &Mutex<W>, value: &impl serde::Serialize) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    let mut w = writer.lock().await;
    w.write_all(&bytes).await?;
    w.flush().await
}

/// A JSON-RPC error response.
fn error_reply(id: Value, code: i64, message: String) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// What one complete line means.
enum Parsed {
    Message(Box<RxJsonRpcMessage<RoleServer>>),
    Reply(Value),
    Nothing,
}

fn parse(line: &[u8]) -> Parsed {
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Parsed::Nothing;
    }
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return Parsed::Reply(error_reply(Value::Null, PARSE_ERROR, format!("Parse error: {e}"))),
    };
    let id = match value.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    };
    let is_notification = value.get("method").is_some() && value.get("id").is_none();
    match serde_json::from_value::<RxJsonRpcMessage<RoleServer>>(value) {
        Ok(m) => Parsed::Message(Box::new(m)),
        // A notification gets no reply, not even an error (JSON-RPC 2.0, section 4.1).
        Err(e) if is_notification => {
            log::warn!("ignored a notification that is not a valid MCP message: {e}");
            Parsed::Nothing
        }
        Err(e) => Parsed::Reply(error_reply(id, INVALID_REQUEST, format!("Invalid request: {e}"))),
    }
}

impl<R, W> Transport<RoleServer> for Lines<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let writer = self.writer.clone();
        async move { write_line(&writer, &item).await }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            // `read_until` appends to `self.line`, so a cancelled call loses nothing.
            let limit = (MAX_LINE + 1).saturating_sub(self.line.len()) as u64;
            let mut take = (&mut self.reader).take(limit);
            let n = match take.read_until(b'\n', &mut self.line).await {
                Ok(n) => n,
                Err(e) => {
                    log::error!("reading stdin: {e}");
                    return None;
                }
            };
            let ended = self.line.last() == Some(&b'\n');
            if n == 0 && !ended {
                // End of input; an unterminated last line is still a request.
                if self.line.is_empty() || self.discarding {
                    return None;
                }
            } else if !ended {
                if self.line.len() <= MAX_LINE {
                    continue;
                }
                // Over-long: drop what we have and skip to the end of the line.
                if !self.discarding {
                    self.discarding = true;
                    let msg = format!("Invalid request: the line is longer than {MAX_LINE} bytes");
                    if write_line(&self.writer, &error_reply(Value::Null, INVALID_REQUEST, msg)).await.is_err() {
                        return None;
                    }
                }
                self.line.clear();
                continue;
            }
            let line = std::mem::take(&mut self.line);
            if std::mem::take(&mut self.discarding) {
                continue;
            }
            match parse(&line) {
                Parsed::Message(m) => return Some(*m),
                Parsed::Reply(reply) => {
                    if write_line(&self.writer, &reply).await.is_err() {
                        return None;
                    }
                }
                Parsed::Nothing => {}
            }
            if n == 0 {
                return None;
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.writer.lock().await.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(line: &str) -> Value {
        match parse(line.as_bytes()) {
            Parsed::Reply(v) => v,
            Parsed::Message(_) => panic!("{line:?} parsed as a message"),
            Parsed::Nothing => panic!("{line:?} got no reply"),
        }
    }

    #[test]
    fn bad_lines_get_json_rpc_errors() {
        let r = reply("{not json");
        assert_eq!(r["error"]["code"], PARSE_ERROR);
        assert_eq!(r["id"], Value::Null);
        let r = reply(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":"nope"}"#);
        assert_eq!(r["error"]["code"], INVALID_REQUEST);
        assert_eq!(r["id"], 7);
        let r = reply("[1,2]");
        assert_eq!(r["error"]["code"], INVALID_REQUEST);
        assert!(matches!(parse(b"   \r\n"), Parsed::Nothing));
        assert!(matches!(parse(br#"{"jsonrpc":"2.0","method":"notifications/bogus","params":3}"#), Parsed::Nothing));
        assert!(matches!(parse(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), Parsed::Message(_)));
    }
}
