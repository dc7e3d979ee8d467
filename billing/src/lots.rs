//! What billing needs to know about lots: their operator, time zone and tariff versions.

use std::collections::HashMap;

use chrono_tz::Tz;
use parkflow_db::{Db, StoreError, query};

use crate::tariff::{TariffDefinition, TariffSchedule};

/// (id, operator, time zone).
type LotRow = (String, String, String);
/// (lot, tariff definition JSON).
type TariffRow = (String, String);

/// One lot's terms.
#[derive(Debug, Clone)]
pub struct LotTerms {
    pub operator_id: String,
    pub time_zone: Tz,
    pub tariffs: TariffSchedule,
}

/// Every lot's terms, by lot id.
#[derive(Debug, Clone, Default)]
pub struct LotBook {
    lots: HashMap<String, LotTerms>,
}

impl LotBook {
    pub async fn load(db: &Db) -> Result<Self, StoreError> {
        let lots: Vec<LotRow> = query("SELECT id, operator_id, time_zone FROM lots")
            .fetch_all(db)
            .await?;
        let tariffs: Vec<TariffRow> =
            query("SELECT lot_id, definition FROM tariffs ORDER BY lot_id, version")
                .fetch_all(db)
                .await?;
        let mut schedules: HashMap<String, TariffSchedule> = HashMap::new();
        for (lot, definition) in tariffs {
            let corrupt = || StoreError::Corrupt(format!("tariff of lot {lot}"));
            let definition: TariffDefinition =
                serde_json::from_str(&definition).map_err(|_| corrupt())?;
            let tariff = definition.validate().map_err(|_| corrupt())?;
            schedules
                .entry(lot.clone())
                .or_default()
                .add(tariff)
                .map_err(|_| corrupt())?;
        }
        let mut book = HashMap::with_capacity(lots.len());
        for (id, operator_id, time_zone) in lots {
            let time_zone: Tz = time_zone
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("time zone of lot {id}")))?;
            let tariffs = schedules.remove(&id).unwrap_or_default();
            book.insert(
                id,
                LotTerms {
                    operator_id,
                    time_zone,
                    tariffs,
                },
            );
        }
        Ok(Self { lots: book })
    }

    pub fn get(&self, lot: &str) -> Option<&LotTerms> {
        self.lots.get(lot)
    }
}
