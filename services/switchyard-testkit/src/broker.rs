//! The embedded Kafka-protocol broker: librdkafka's mock cluster, reached over TCP by any Kafka
//! client. `MockCluster` is not `Send`, so it lives on a thread of its own and takes commands
//! over a channel. It keeps everything in memory: for demos and tests, not storage.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;
use tokio::net::{TcpListener, TcpStream};

enum Command {
    CreateTopic(String, i32, mpsc::Sender<Result<(), String>>),
    BrokerDown(mpsc::Sender<Result<(), String>>),
    BrokerUp(mpsc::Sender<Result<(), String>>),
    Stop,
}

/// A running embedded broker.
pub struct EmbeddedBroker {
    bootstrap: String,
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

/// A broker that would not start or would not take a command.
#[derive(Debug, thiserror::Error)]
#[error("embedded broker: {0}")]
pub struct BrokerError(String);

impl EmbeddedBroker {
    /// Starts a one-broker mock cluster on a thread of its own.
    pub fn start() -> Result<Self, BrokerError> {
        let (tx, rx) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let thread = std::thread::Builder::new()
            .name("embedded-broker".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Command::CreateTopic(name, partitions, reply) => {
                            let _ = reply.send(
                                cluster
                                    .create_topic(&name, partitions, 1)
                                    .map_err(|e| e.to_string()),
                            );
                        }
                        Command::BrokerDown(reply) => {
                            let _ = reply.send(cluster.broker_down(1).map_err(|e| e.to_string()));
                        }
                        Command::BrokerUp(reply) => {
                            let _ = reply.send(cluster.broker_up(1).map_err(|e| e.to_string()));
                        }
                        Command::Stop => break,
                    }
                }
            })
            .map_err(|e| BrokerError(format!("cannot start its thread: {e}")))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| BrokerError("its thread ended before it started".into()))?
            .map_err(|e| BrokerError(format!("mock cluster failed to start: {e}")))?;
        Ok(Self {
            bootstrap,
            commands: tx,
            thread: Some(thread),
        })
    }

    /// `host:port` of the mock cluster's listener.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    fn ask(
        &self,
        make: impl FnOnce(mpsc::Sender<Result<(), String>>) -> Command,
    ) -> Result<(), BrokerError> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .send(make(tx))
            .map_err(|_| BrokerError("the broker thread is gone".into()))?;
        rx.recv()
            .map_err(|_| BrokerError("the broker thread is gone".into()))?
            .map_err(BrokerError)
    }

    /// Creates a topic (replication factor 1).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), BrokerError> {
        self.ask(|tx| Command::CreateTopic(name.to_string(), partitions, tx))
            .map_err(|e| BrokerError(format!("cannot create topic {name}: {}", e.0)))
    }

    /// Takes the broker down (clients see it unreachable); data is kept.
    pub fn broker_down(&self) -> Result<(), BrokerError> {
        self.ask(Command::BrokerDown)
    }

    /// Brings the broker back.
    pub fn broker_up(&self) -> Result<(), BrokerError> {
        self.ask(Command::BrokerUp)
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Forwards every connection accepted on `listener` to `target` (so the broker can be reached
/// on a fixed port; clients then follow the broker's advertised address on the same host).
pub async fn forward(listener: TcpListener, target: SocketAddr) {
    loop {
        let (mut inbound, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        tokio::spawn(async move {
            match TcpStream::connect(target).await {
                Ok(mut outbound) => {
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => tracing::warn!(%peer, error = %e, "cannot reach the embedded broker"),
            }
        });
    }
}
