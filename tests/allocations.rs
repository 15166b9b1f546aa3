//! No heap allocation per request in steady state: a counting global
//! allocator counts what the server's own thread allocates while clients
//! run PING and ECHO, at depth 1 and pipelined.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

struct Counting;

static SERVER_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the server's thread only: the clients' allocations don't count.
    static IS_SERVER: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if IS_SERVER.with(|s| s.get()) {
            SERVER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if IS_SERVER.with(|s| s.get()) {
            SERVER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    line: String,
}

impl Client {
    fn connect(addr: std::net::SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let mut c = Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            line: String::new(),
        };
        assert_eq!(c.read_line(), "READY\n");
        c
    }

    fn read_line(&mut self) -> &str {
        self.line.clear();
        self.reader.read_line(&mut self.line).unwrap();
        &self.line
    }

    /// `rounds` round trips of `depth` pipelined requests each.
    fn run(&mut self, rounds: usize, depth: usize, request: &[u8], response: &str) {
        let batch = request.repeat(depth);
        for _ in 0..rounds {
            self.writer.write_all(&batch).unwrap();
            for _ in 0..depth {
                assert_eq!(self.read_line(), response);
            }
        }
    }
}

#[test]
fn steady_state_requests_allocate_nothing_on_the_server() {
    let config = loopline::Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..Default::default()
    };
    let server = loopline::Server::bind(config, loopline::protocol::Loopline).unwrap();
    let addr = server.local_addrs()[0];
    let stop = server.shutdown_handle();
    let running = std::thread::spawn(move || {
        IS_SERVER.with(|s| s.set(true));
        server.run()
    });

    let mut clients: Vec<Client> = (0..8).map(|_| Client::connect(addr)).collect();
    let echo = format!("ECHO {}\n", "e".repeat(200));
    let echo_reply = format!("OK {}\n", "e".repeat(200));
    // Warm up: buffers, the slab, the event list reach their working size.
    for c in &mut clients {
        c.run(50, 1, b"PING\n", "PONG\n");
        c.run(50, 32, echo.as_bytes(), &echo_reply);
    }
    let before = SERVER_ALLOCATIONS.load(Ordering::Relaxed);
    for c in &mut clients {
        c.run(500, 1, b"PING\n", "PONG\n");
        c.run(200, 32, b"PING\r\n", "PONG\n");
        c.run(100, 16, echo.as_bytes(), &echo_reply);
    }
    let during = SERVER_ALLOCATIONS.load(Ordering::Relaxed) - before;
    let requests = 8 * (500 + 200 * 32 + 100 * 16);
    stop.shutdown();
    drop(clients);
    running.join().unwrap().unwrap();
    assert_eq!(
        during, 0,
        "{during} allocations on the server thread for {requests} requests"
    );
}
