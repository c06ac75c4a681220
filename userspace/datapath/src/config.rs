//! The runtime configuration in the pinned `WEIR_CONFIG[0]`, which the
//! kernel reads per packet: opened by pin, so the node network can update
//! the node address while the pod object owns the rest.

use aya::maps::{Array, MapData};
use weir_common::{config::DatapathConfig, maps::CONFIG};

use crate::{pinned, pins::PinLayout, DatapathError};

pub struct ConfigMap {
    arr: Array<MapData, DatapathConfig>,
}

impl ConfigMap {
    /// Opens the pinned configuration (the pod object created it).
    pub fn open(layout: &PinLayout) -> Result<Self, DatapathError> {
        Ok(Self { arr: pinned::array(layout, CONFIG)? })
    }

    /// The configuration written last; `None` when nothing was written
    /// yet (an unwritten slot is all zeroes).
    pub fn get(&self) -> Option<DatapathConfig> {
        self.arr.get(&0, 0).ok().filter(|c| c.ct_udp_timeout_s != 0)
    }

    pub fn set(&mut self, cfg: &DatapathConfig) -> Result<(), DatapathError> {
        self.arr.set(0, cfg, 0).map_err(|source| DatapathError::Map { name: CONFIG, source })
    }
}
