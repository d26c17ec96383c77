//! One subscriber connection per store. Local subscribers share it through broadcast channels;
//! after the connection drops, a background task reconnects with backoff and resubscribes to
//! every channel anyone listens to.

use super::RedisOptions;
use crate::error::StoreError;
use crate::seam::{Message, StoreResult, Subscription};
use futures_util::StreamExt;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

const CHANNEL_CAPACITY: usize = 4096;

type Ack = oneshot::Sender<()>;
type CommandSender = mpsc::UnboundedSender<(Arc<str>, Ack)>;

pub(super) struct Hub {
    channels: Arc<Mutex<HashMap<Arc<str>, broadcast::Sender<Message>>>>,
    commands: Mutex<Option<CommandSender>>,
    /// The server to subscribe on; Sentinel failover replaces it.
    target: Arc<parking_lot::RwLock<Option<redis::Client>>>,
    options: RedisOptions,
}

impl Hub {
    pub fn new(target: Arc<parking_lot::RwLock<Option<redis::Client>>>, options: RedisOptions) -> Self {
        Hub {
            channels: Arc::default(),
            commands: Mutex::new(None),
            target,
            options,
        }
    }

    /// Subscribes and waits (up to `wait`) until the server confirmed the subscription. On
    /// timeout the channel stays registered and is subscribed as soon as the server is back.
    pub async fn subscribe(&self, channel: &str, wait: Duration) -> StoreResult<Subscription> {
        let (rx, fresh) = {
            let mut channels = self.channels.lock();
            match channels.get(channel) {
                Some(tx) => (tx.subscribe(), false),
                None => {
                    let (tx, rx) = broadcast::channel(CHANNEL_CAPACITY);
                    channels.insert(channel.into(), tx);
                    (rx, true)
                }
            }
        };
        if !fresh {
            return Ok(Subscription::new(rx));
        }
        let (ack_tx, ack_rx) = oneshot::channel();
        self.command_sender()
            .send((channel.into(), ack_tx))
            .map_err(|_| StoreError::Unavailable("subscriber task stopped".into()))?;
        match tokio::time::timeout(wait, ack_rx).await {
            Ok(Ok(())) => Ok(Subscription::new(rx)),
            Ok(Err(_)) => Err(StoreError::Unavailable("subscriber task stopped".into())),
            Err(_) => Err(StoreError::Timeout(wait)),
        }
    }

    fn command_sender(&self) -> mpsc::UnboundedSender<(Arc<str>, Ack)> {
        let mut guard = self.commands.lock();
        if let Some(tx) = guard.as_ref() {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(
            Arc::downgrade(&self.channels),
            self.target.clone(),
            self.options.clone(),
            rx,
        ));
        *guard = Some(tx.clone());
        tx
    }
}

type Channels = Mutex<HashMap<Arc<str>, broadcast::Sender<Message>>>;

async fn run(
    channels: Weak<Channels>,
    target: Arc<parking_lot::RwLock<Option<redis::Client>>>,
    options: RedisOptions,
    mut commands: mpsc::UnboundedReceiver<(Arc<str>, Ack)>,
) {
    let mut backoff = options.reconnect_min;
    let mut waiting: Vec<Ack> = Vec::new();
    loop {
        let client = target.read().clone();
        let pubsub = match client {
            None => None,
            Some(client) => match tokio::time::timeout(options.connect_timeout, client.get_async_pubsub()).await {
                Ok(Ok(p)) => Some(p),
                Ok(Err(e)) => {
                    tracing::warn!(error = %super::describe(&e), "store pub/sub connection failed; retrying");
                    None
                }
                Err(_) => None,
            },
        };
        if let Some(pubsub) = pubsub {
            let (mut sink, mut stream) = pubsub.split();
            let names: Vec<String> = match channels.upgrade() {
                Some(c) => c.lock().keys().map(|k| k.to_string()).collect(),
                None => return,
            };
            let subscribed = names.is_empty() || sink.subscribe(&names).await.is_ok();
            if subscribed {
                backoff = options.reconnect_min;
                for ack in waiting.drain(..) {
                    let _ = ack.send(());
                }
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => {
                                let Some(channels) = channels.upgrade() else { return };
                                let name = msg.get_channel_name();
                                let tx = channels.lock().get(name).cloned();
                                if let Some(tx) = tx {
                                    let payload = bytes::Bytes::copy_from_slice(msg.get_payload_bytes());
                                    let _ = tx.send(Message { channel: name.into(), payload });
                                }
                            }
                            None => break,
                        },
                        cmd = commands.recv() => match cmd {
                            Some((name, ack)) => {
                                if sink.subscribe(&*name).await.is_ok() {
                                    let _ = ack.send(());
                                } else {
                                    waiting.push(ack);
                                    break;
                                }
                            }
                            None => return,
                        },
                    }
                }
                tracing::warn!("store pub/sub connection lost; resubscribing after reconnect");
            }
        }
        // Wait before the next attempt, still taking new subscriptions (acked once connected).
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                cmd = commands.recv() => match cmd {
                    Some((_, ack)) => waiting.push(ack),
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(options.reconnect_max);
    }
}
