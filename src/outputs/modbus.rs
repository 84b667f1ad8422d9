//! Modbus TCP output (tokio-modbus's synchronous client), for PLCs that
//! speak nothing else. Per decision, in this order: the verdict coils (the
//! decision's verdict set, the others cleared), the class register, then
//! the counter register (1, 2, ... mod 65536 from the daemon's start), so a
//! PLC that watches the counter reads coils that are already written.
//!
//! A lost connection is reopened on a later decision, no sooner than a
//! backoff (100 ms doubling to 5 s) after the failure; decisions in between
//! fail at once (counted) rather than each waiting for a timeout. A PLC
//! needs the latest verdict, not the backlog.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use tokio_modbus::client::sync::{self, Writer};
use tokio_modbus::Slave;

use super::config::ModbusConfig;
use super::{Backoff, Deliver, Message};
use crate::error::{Error, Result};
use crate::verdict::Verdict;

pub struct Modbus {
    address: String,
    unit: u8,
    timeout: Duration,
    coils: [(Verdict, Option<u16>); 3],
    counter_register: Option<u16>,
    class_register: Option<u16>,
    counter: u16,
    ctx: Option<sync::Context>,
    backoff: Backoff,
    retry_at: Option<Instant>,
}

impl Modbus {
    pub fn new(c: &ModbusConfig, name: &str) -> Result<Modbus> {
        // Resolved here once so that a typing error stops the start.
        resolve(&c.address).map_err(|e| Error::Runtime(format!("output {name}: {e}")))?;
        Ok(Modbus {
            address: c.address.clone(),
            unit: c.unit_id,
            timeout: Duration::from_millis(c.timeout_ms),
            coils: [
                (Verdict::Ok, c.coils.ok),
                (Verdict::Ng, c.coils.ng),
                (Verdict::Review, c.coils.review),
            ],
            counter_register: c.counter_register,
            class_register: c.class_register,
            counter: 0,
            ctx: None,
            backoff: Backoff::new(Duration::from_secs(5)),
            retry_at: None,
        })
    }

    fn context(&mut self) -> std::result::Result<&mut sync::Context, String> {
        if self.ctx.is_none() {
            if let Some(at) = self.retry_at {
                if Instant::now() < at {
                    return Err(format!(
                        "{}: not connected (next attempt in {} ms)",
                        self.address,
                        at.saturating_duration_since(Instant::now()).as_millis()
                    ));
                }
            }
            let addr = resolve(&self.address)?;
            let ctx =
                sync::tcp::connect_slave_with_timeout(addr, Slave(self.unit), Some(self.timeout))
                    .map_err(|e| format!("connect {}: {e}", self.address))?;
            self.ctx = Some(ctx);
        }
        Ok(self.ctx.as_mut().expect("just connected"))
    }

    fn write(&mut self, m: &Message) -> std::result::Result<(), String> {
        let coils = self.coils;
        let class = self.class_register;
        let counter = self.counter_register;
        let next = self.counter.wrapping_add(1);
        let ctx = self.context()?;
        let check = |what: &str, r: tokio_modbus::Result<()>| match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(code)) => Err(format!("{what}: the server answered {code:?}")),
            Err(e) => Err(format!("{what}: {e}")),
        };
        for (v, addr) in coils {
            if let Some(a) = addr {
                check(
                    &format!("coil {a}"),
                    ctx.write_single_coil(a, v == m.verdict),
                )?;
            }
        }
        if let Some(a) = class {
            let value = u16::try_from(m.class_index).unwrap_or(u16::MAX);
            check(
                &format!("register {a}"),
                ctx.write_single_register(a, value),
            )?;
        }
        if let Some(a) = counter {
            check(&format!("register {a}"), ctx.write_single_register(a, next))?;
        }
        self.counter = next;
        Ok(())
    }
}

fn resolve(address: &str) -> std::result::Result<SocketAddr, String> {
    address
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address}: no address"))
}

impl Deliver for Modbus {
    fn deliver(&mut self, m: &Message) -> std::result::Result<bool, String> {
        match self.write(m) {
            Ok(()) => {
                self.backoff.reset();
                self.retry_at = None;
                Ok(true)
            }
            Err(e) => {
                if self.ctx.take().is_some() || self.retry_at.is_none_or(|at| Instant::now() >= at)
                {
                    self.retry_at = Some(Instant::now() + self.backoff.step());
                }
                Err(e)
            }
        }
    }
}
