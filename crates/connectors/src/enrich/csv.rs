//! A reference table from a CSV file whose first line names the columns.

use super::{Attributes, Builder, Shape};
use cartpulse_engine::enrich::{Loaded, TableLoader};
use std::path::PathBuf;

pub struct CsvTable {
    path: PathBuf,
    shape: Shape,
}

impl CsvTable {
    pub fn new(path: PathBuf, shape: Shape) -> Self {
        CsvTable { path, shape }
    }
}

impl<T: Attributes> TableLoader<T> for CsvTable {
    fn describe(&self) -> String {
        format!("csv {}", self.path.display())
    }

    fn load(&self) -> Result<Loaded<T>, String> {
        let mut r = ::csv::ReaderBuilder::new()
            .trim(::csv::Trim::All)
            .from_path(&self.path)
            .map_err(|e| e.to_string())?;
        let header: Vec<String> = r
            .headers()
            .map_err(|e| e.to_string())?
            .iter()
            .map(str::to_string)
            .collect();
        let names: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut b = Builder::<T>::new(&self.shape, &names)?;
        let mut rec = ::csv::StringRecord::new();
        loop {
            // a line the CSV reader cannot split (a stray quote) fails the load: which
            // rows it would have held is unknowable
            match r.read_record(&mut rec) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(e.to_string()),
            }
            let values: Vec<Option<&str>> =
                rec.iter().map(|v| (!v.is_empty()).then_some(v)).collect();
            b.row(&values);
        }
        Ok(b.out)
    }
}
