//! A loopback port that refuses connections and stays reserved.

/// A loopback port nothing listens on, kept reserved while this lives: the
/// socket is bound but never listens, so a connection to it is refused at
/// once, and no server another test starts meanwhile can take the port (as
/// it could after picking a free port and letting it go).
#[derive(Debug)]
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    port: u16,
}

impl ClosedPort {
    /// Reserves a port on 127.0.0.1.
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("create a socket");
        socket
            .bind(([127, 0, 0, 1], 0).into())
            .expect("bind a loopback port");
        let port = socket.local_addr().expect("a bound address").port();
        Self {
            _socket: socket,
            port,
        }
    }

    /// The port number.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_are_refused() {
        let closed = ClosedPort::new();
        let err = tokio::net::TcpStream::connect(("127.0.0.1", closed.port()))
            .await
            .expect_err("nothing listens");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
