//! The two servers under test behind one interface: our `Stack` and smoltcp's `Interface` with TCP
//! sockets, both on a [`Frames`] device, both driven the same way per step: receive everything
//! queued, let the application run, transmit everything due.

use super::dev::Frames;
use super::frames::{SERVER_IP, SERVER_MAC};
use handshake::ipv4::Routes;
use handshake::stack::{run_batch, Stack, StackConfig};
use handshake::wire::Mac;
use handshake::Instant;
use smoltcp::iface::{
    Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet,
};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

/// Port of the echo service (both servers).
pub const ECHO_PORT: u16 = 7;
/// Port of the bulk (HTTP) service (both servers).
pub const BULK_PORT: u16 = 80;
/// Send and receive buffer per connection (both servers).
pub const TCP_BUF: usize = 64 * 1024;

/// A server under test.
pub trait Server {
    /// Its name in reports.
    const NAME: &'static str;
    /// Its device.
    fn dev(&mut self) -> &mut Frames;
    /// One step at `now_us`: receive every queued frame, run the application, transmit.
    fn step(&mut self, now_us: u64);
}

/// Our stack with its built-in echo and HTTP apps.
pub struct Ours {
    /// The stack.
    pub stack: Stack,
    /// Its device.
    pub dev: Frames,
}

impl Ours {
    /// A stack on 198.18.0.1/24, echo on port 7, HTTP on port 80 serving `body` at `/`.
    pub fn new(body: Option<Vec<u8>>) -> Self {
        let routes = Routes::new(vec!["198.18.0.1/24".parse().expect("valid CIDR")], None)
            .expect("valid routes");
        let mut cfg = StackConfig::new(Mac(SERVER_MAC), routes);
        cfg.gratuitous_arp = false;
        // smoltcp does not rate-limit echo replies: neither do we here.
        cfg.icmp.echo_rate = 0;
        cfg.tcp.send_buf = TCP_BUF;
        cfg.tcp.recv_buf = TCP_BUF;
        cfg.tcp.max_flows = 1024;
        cfg.apps.echo = Some(ECHO_PORT);
        cfg.apps.http = Some(BULK_PORT);
        cfg.apps.http_body = body;
        Ours {
            stack: Stack::new(cfg),
            dev: Frames::new(256),
        }
    }
}

impl Server for Ours {
    const NAME: &'static str = "handshake";

    fn dev(&mut self) -> &mut Frames {
        &mut self.dev
    }

    #[inline]
    fn step(&mut self, now_us: u64) {
        let now = Instant::from_micros(now_us);
        loop {
            run_batch(&mut self.stack, &mut self.dev, now);
            if self.dev.rx_pending() == 0 {
                break;
            }
        }
    }
}

/// What smoltcp's sockets do.
pub enum SmolApp {
    /// Nothing (ARP and ICMP are answered by the interface).
    None,
    /// Echo on port 7: read what TCP can send back, send it; close after the peer closes.
    Echo,
    /// On port 80: after any request bytes, send `response` once; close after the peer closes.
    Respond {
        /// The bytes to send (the same head and body our HTTP app sends).
        response: Vec<u8>,
    },
}

/// smoltcp's interface with `n` TCP sockets listening on one port (smoltcp has no accept queue:
/// one listening socket per concurrent connection), re-listening after each close.
pub struct Smol {
    iface: Interface,
    sockets: SocketSet<'static>,
    handles: Vec<SocketHandle>,
    /// Per socket: request seen, response bytes queued.
    progress: Vec<(bool, usize)>,
    app: SmolApp,
    port: u16,
    scratch: Box<[u8]>,
    /// Its device.
    pub dev: Frames,
}

impl Smol {
    /// An interface on 198.18.0.1/24 with `n` sockets for `app`.
    pub fn new(n: usize, app: SmolApp) -> Self {
        let mut dev = Frames::new(256);
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(SERVER_MAC)));
        config.random_seed = 0x5a5a_5a5a;
        let mut iface = Interface::new(config, &mut dev, smoltcp::time::Instant::from_micros(0));
        let [a, b, c, d] = SERVER_IP;
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::v4(a, b, c, d), 24))
                .expect("room for one address");
        });
        let port = match app {
            SmolApp::Respond { .. } => BULK_PORT,
            _ => ECHO_PORT,
        };
        let mut sockets = SocketSet::new(Vec::new());
        let mut handles = Vec::new();
        if !matches!(app, SmolApp::None) {
            for _ in 0..n {
                let mut s = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; TCP_BUF]),
                    tcp::SocketBuffer::new(vec![0; TCP_BUF]),
                );
                s.listen(port).expect("port is not zero");
                handles.push(sockets.add(s));
            }
        }
        Smol {
            iface,
            sockets,
            progress: vec![(false, 0); handles.len()],
            handles,
            app,
            port,
            scratch: vec![0; TCP_BUF].into_boxed_slice(),
            dev,
        }
    }

    fn run_app(&mut self) {
        for (i, &h) in self.handles.iter().enumerate() {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            match &self.app {
                SmolApp::None => {}
                SmolApp::Echo => {
                    while s.can_recv() && s.can_send() {
                        let room = s.send_capacity() - s.send_queue();
                        let want = room.min(self.scratch.len());
                        let n = s.recv_slice(&mut self.scratch[..want]).unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        let sent = s.send_slice(&self.scratch[..n]).unwrap_or(0);
                        debug_assert_eq!(sent, n);
                    }
                }
                SmolApp::Respond { response } => {
                    let (requested, sent) = &mut self.progress[i];
                    while s.can_recv() {
                        let n = s.recv_slice(&mut self.scratch[..]).unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        *requested = true;
                    }
                    if *requested && *sent < response.len() && s.can_send() {
                        *sent += s.send_slice(&response[*sent..]).unwrap_or(0);
                    }
                }
            }
            match s.state() {
                tcp::State::CloseWait if s.recv_queue() == 0 => {
                    let done = match &self.app {
                        SmolApp::Respond { response } => {
                            let (requested, sent) = self.progress[i];
                            !requested || sent == response.len()
                        }
                        _ => true,
                    };
                    if done {
                        s.close();
                    }
                }
                tcp::State::Closed => {
                    s.listen(self.port).expect("port is not zero");
                    self.progress[i] = (false, 0);
                }
                _ => {}
            }
        }
    }
}

impl Server for Smol {
    const NAME: &'static str = "smoltcp";

    fn dev(&mut self) -> &mut Frames {
        &mut self.dev
    }

    #[inline]
    fn step(&mut self, now_us: u64) {
        let now = smoltcp::time::Instant::from_micros(now_us as i64);
        // Ingress, application, egress: the order of our `run_batch`, so that replies carry the
        // application's data and FIN instead of separate pure ACKs.
        while self
            .iface
            .poll_ingress_single(now, &mut self.dev, &mut self.sockets)
            != PollIngressSingleResult::None
        {}
        self.run_app();
        while self
            .iface
            .poll_egress(now, &mut self.dev, &mut self.sockets)
            != PollResult::None
        {}
    }
}
