//! The product catalogue rules read stock, names and categories from (a CSV file: `sku`,
//! `name`, `category`, `brand`, `price`, `stock`, with a header; extra columns ignored).

use hashbrown::HashMap;
use std::path::Path;

#[derive(Clone, Debug, Default)]
pub struct Product {
    pub name: String,
    pub category: String,
    pub brand: String,
    pub stock: Option<u32>,
}

#[derive(Clone, Debug, Default)]
pub struct Catalog {
    products: HashMap<String, Product>,
}

impl Catalog {
    pub fn load(path: &Path) -> Result<Catalog, String> {
        let mut r =
            csv::Reader::from_path(path).map_err(|e| format!("catalog {}: {e}", path.display()))?;
        let headers = r
            .headers()
            .map_err(|e| format!("catalog {}: {e}", path.display()))?
            .clone();
        let col = |name: &str| headers.iter().position(|h| h.trim() == name);
        let sku = col("sku").ok_or_else(|| {
            format!(
                "catalog {}: no `sku` column (header: {})",
                path.display(),
                headers.iter().collect::<Vec<_>>().join(",")
            )
        })?;
        let (name, category, brand, stock) =
            (col("name"), col("category"), col("brand"), col("stock"));
        let mut products = HashMap::new();
        for (i, rec) in r.records().enumerate() {
            let rec =
                rec.map_err(|e| format!("catalog {} record {}: {e}", path.display(), i + 1))?;
            let get =
                |c: Option<usize>| c.and_then(|c| rec.get(c)).unwrap_or("").trim().to_string();
            let stock = match stock.and_then(|c| rec.get(c)).map(str::trim) {
                None | Some("") => None,
                Some(s) => Some(s.parse::<u32>().map_err(|e| {
                    format!(
                        "catalog {} record {}: stock `{s}`: {e}",
                        path.display(),
                        i + 1
                    )
                })?),
            };
            products.insert(
                get(Some(sku)),
                Product {
                    name: get(name),
                    category: get(category),
                    brand: get(brand),
                    stock,
                },
            );
        }
        Ok(Catalog { products })
    }

    pub fn from_products(products: impl IntoIterator<Item = (String, Product)>) -> Catalog {
        Catalog {
            products: products.into_iter().collect(),
        }
    }

    pub fn stock(&self, sku: &str) -> Option<u32> {
        self.products.get(sku).and_then(|p| p.stock)
    }

    pub fn category(&self, sku: &str) -> Option<&str> {
        self.products
            .get(sku)
            .map(|p| p.category.as_str())
            .filter(|c| !c.is_empty())
    }

    pub fn name(&self, sku: &str) -> Option<&str> {
        self.products.get(sku).map(|p| p.name.as_str())
    }

    pub fn len(&self) -> usize {
        self.products.len()
    }

    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }
}
