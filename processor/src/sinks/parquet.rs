//! Parquet objects for the S3 sink: the records of one object become one row group, each
//! record's top-level fields its columns (all optional: a missing field is null).
//!
//! The columns are the configured ones (`s3.parquet.columns`), or else the fields of the
//! object's own records, in name order, each typed from its values: booleans, 64-bit
//! integers, doubles where any value has a fraction or an exponent, strings; a field whose
//! values mix kinds, or hold objects or arrays, is a JSON column of each value's JSON text.
//! Nothing of a record is lost in an inferred layout, and the same records always make
//! the same object, so a replay writes the same bytes under the same name.
//!
//! Encoding (dictionary pages, Snappy, statistics) is the `parquet` crate's.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use parquet::basic::{Compression, LogicalType, Repetition, Type as PhysicalType};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use serde_json::value::RawValue;
use sluice_crds::plugins::{ColumnType, ParquetColumn};

/// The top-level fields of one record, borrowed from its value.
type Fields<'a> = BTreeMap<Cow<'a, str>, &'a RawValue>;

/// Which columns an object has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// The fields of the object's records, typed from their values.
    Inferred,
    /// These columns, in this order.
    Configured(Vec<ParquetColumn>),
}

impl Layout {
    /// The layout of `columns` (none: inferred); refuses a column named twice.
    pub fn new(columns: Option<&[ParquetColumn]>) -> Result<Layout, String> {
        let Some(columns) = columns else {
            return Ok(Layout::Inferred);
        };
        for (i, column) in columns.iter().enumerate() {
            if columns[..i].iter().any(|c| c.name == column.name) {
                return Err(format!("s3.parquet.columns names {:?} twice", column.name));
            }
        }
        Ok(Layout::Configured(columns.to_vec()))
    }
}

/// An encoded object: its bytes, and the records left out because they do not fit.
#[derive(Debug, Default)]
pub struct Encoded {
    /// The Parquet file; empty when no record fit.
    pub body: Vec<u8>,
    /// Rows written.
    pub rows: usize,
    /// Records left out (the caller's index, and why).
    pub refused: Vec<(usize, String)>,
}

/// Most columns of an inferred layout: records keyed by data (ids as field names) would
/// otherwise make a column per record.
pub const MAX_INFERRED_COLUMNS: usize = 1024;

/// Encodes the JSON `values` (each with the caller's index) as one Parquet file; fails
/// when an inferred layout would pass [`MAX_INFERRED_COLUMNS`].
pub fn encode<'a>(
    values: impl IntoIterator<Item = (usize, &'a [u8])>,
    layout: &Layout,
) -> Result<Encoded, ParquetError> {
    let mut refused = Vec::new();
    let mut rows: Vec<(usize, Fields<'a>)> = Vec::new();
    for (index, value) in values {
        match fields(value) {
            Ok(f) => rows.push((index, f)),
            Err(e) => refused.push((index, e)),
        }
    }
    let columns: Vec<(String, ColumnType)> = match layout {
        Layout::Configured(columns) => columns.iter().map(|c| (c.name.clone(), c.kind)).collect(),
        Layout::Inferred => {
            let inferred = infer(rows.iter().map(|(_, f)| f));
            if inferred.len() > MAX_INFERRED_COLUMNS {
                return Err(ParquetError::General(format!(
                    "the records have {} distinct top-level fields, more than the \
                     {MAX_INFERRED_COLUMNS} columns an inferred layout takes: name the columns \
                     in s3.parquet.columns",
                    inferred.len()
                )));
            }
            inferred
        }
    };
    let mut kept: Vec<&Fields<'a>> = Vec::with_capacity(rows.len());
    for (index, fields) in &rows {
        // An inferred layout fits every row; a configured one may not.
        let misfit = columns
            .iter()
            .find_map(|(name, kind)| misfit(fields.get(name.as_str()).copied(), *kind, name));
        match misfit {
            Some(e) => refused.push((*index, e)),
            None => kept.push(fields),
        }
    }
    refused.sort_by_key(|(index, _)| *index);
    Ok(Encoded {
        body: if kept.is_empty() {
            Vec::new()
        } else {
            write(&columns, &kept)?
        },
        rows: kept.len(),
        refused,
    })
}

/// The top-level fields of a JSON object value.
fn fields(value: &[u8]) -> Result<Fields<'_>, String> {
    serde_json::from_slice::<Fields<'_>>(value).map_err(|e| {
        if serde_json::from_slice::<&RawValue>(value).is_ok() {
            "a Parquet row is a JSON object; the value is another JSON value".to_string()
        } else {
            format!("the value is not JSON: {e}")
        }
    })
}

/// What a JSON value is, for typing a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Int,
    Float,
    Str,
    /// An object, an array, or an integer beyond 64 bits.
    Other,
}

fn kind(raw: &RawValue) -> Kind {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'n') => Kind::Null,
        Some(b't' | b'f') => Kind::Bool,
        Some(b'"') => Kind::Str,
        Some(b'{' | b'[') | None => Kind::Other,
        Some(_) if text.contains(['.', 'e', 'E']) => Kind::Float,
        Some(_) if text.parse::<i64>().is_ok() => Kind::Int,
        Some(_) => Kind::Other,
    }
}

/// The column type of a field whose values so far make `column`, given one more `value`.
fn widen(column: Option<ColumnType>, value: Kind) -> Option<ColumnType> {
    let of_value = match value {
        Kind::Null => return column,
        Kind::Bool => ColumnType::Boolean,
        Kind::Int => ColumnType::Int64,
        Kind::Float => ColumnType::Double,
        Kind::Str => ColumnType::String,
        Kind::Other => ColumnType::Json,
    };
    Some(match (column, of_value) {
        (None, t) => t,
        (Some(a), b) if a == b => a,
        (Some(ColumnType::Int64 | ColumnType::Double), ColumnType::Int64 | ColumnType::Double) => {
            ColumnType::Double
        }
        _ => ColumnType::Json,
    })
}

/// The columns of `rows`: every field, in name order, typed from its values (a field
/// that is null everywhere is a string column).
fn infer<'r, 'a: 'r>(rows: impl Iterator<Item = &'r Fields<'a>>) -> Vec<(String, ColumnType)> {
    let mut types: BTreeMap<&str, Option<ColumnType>> = BTreeMap::new();
    for row in rows {
        for (name, value) in row {
            let slot = types.entry(name.as_ref()).or_default();
            *slot = widen(*slot, kind(value));
        }
    }
    types
        .into_iter()
        .map(|(name, t)| (name.to_string(), t.unwrap_or(ColumnType::String)))
        .collect()
}

/// Why `value` does not fit a `kind` column named `name`, if it does not.
fn misfit(value: Option<&RawValue>, kind: ColumnType, name: &str) -> Option<String> {
    let value = value?;
    let fits = matches!(
        (self::kind(value), kind),
        (Kind::Null, _)
            | (_, ColumnType::Json)
            | (Kind::Bool, ColumnType::Boolean)
            | (Kind::Str, ColumnType::String)
            | (Kind::Int | Kind::Float, ColumnType::Double)
            | (Kind::Int, ColumnType::Int64)
    );
    (!fits).then(|| {
        let mut shown = value.get().to_string();
        if shown.len() > 64 {
            let cut = (0..=64)
                .rev()
                .find(|i| shown.is_char_boundary(*i))
                .unwrap_or(0);
            shown.truncate(cut);
            shown.push('…');
        }
        format!(
            "field {name:?} is {shown}, which does not fit its column of type {}",
            type_name(kind)
        )
    })
}

/// The type as `s3.parquet.columns` names it.
fn type_name(kind: ColumnType) -> &'static str {
    match kind {
        ColumnType::String => "string",
        ColumnType::Int64 => "int64",
        ColumnType::Double => "double",
        ColumnType::Boolean => "boolean",
        ColumnType::Json => "json",
    }
}

/// A boolean column's value of `raw`: `None` for null.
fn bool_of(raw: &RawValue) -> Option<bool> {
    match raw.get() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// A string or JSON column's value of `raw`: `None` for null.
fn text_of(raw: &RawValue, kind: ColumnType) -> Option<ByteArray> {
    match (self::kind(raw), kind) {
        (Kind::Null, _) => None,
        (Kind::Str, ColumnType::String) => serde_json::from_str::<String>(raw.get())
            .ok()
            .map(|s| ByteArray::from(s.into_bytes())),
        (_, ColumnType::Json) => Some(ByteArray::from(one_line(raw).into_owned().into_bytes())),
        _ => None,
    }
}

/// The value's JSON text on one line: as it was written, unless it spans lines (only
/// whitespace between tokens can: JSON strings hold no line breaks), then compact.
pub(super) fn one_line(raw: &RawValue) -> Cow<'_, str> {
    let text = raw.get();
    if !text.contains(['\n', '\r']) {
        return Cow::Borrowed(text);
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => Cow::Owned(v.to_string()),
        Err(_) => Cow::Borrowed(text),
    }
}

/// One Parquet file of `rows` in `columns`.
fn write(columns: &[(String, ColumnType)], rows: &[&Fields<'_>]) -> Result<Vec<u8>, ParquetError> {
    let fields = columns
        .iter()
        .map(|(name, kind)| column_type(name, *kind).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let schema = Arc::new(
        Type::group_type_builder("record")
            .with_fields(fields)
            .build()?,
    );
    let properties = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("sluice {}", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    let mut file = SerializedFileWriter::new(Vec::new(), schema, properties)?;
    let mut group = file.next_row_group()?;
    for (name, kind) in columns {
        let values = rows.iter().map(|row| row.get(name.as_str()).copied());
        let mut defs: Vec<i16> = Vec::with_capacity(rows.len());
        let mut column = group
            .next_column()?
            .ok_or_else(|| ParquetError::General(format!("no writer for column {name}")))?;
        match kind {
            ColumnType::Boolean => {
                let present: Vec<bool> = present(values, &mut defs, bool_of);
                column
                    .typed::<BoolType>()
                    .write_batch(&present, Some(&defs), None)?;
            }
            ColumnType::Int64 => {
                let present: Vec<i64> = present(values, &mut defs, |r| r.get().parse().ok());
                column
                    .typed::<Int64Type>()
                    .write_batch(&present, Some(&defs), None)?;
            }
            ColumnType::Double => {
                let present: Vec<f64> = present(values, &mut defs, |r| r.get().parse().ok());
                column
                    .typed::<DoubleType>()
                    .write_batch(&present, Some(&defs), None)?;
            }
            ColumnType::String | ColumnType::Json => {
                let present: Vec<ByteArray> = present(values, &mut defs, |r| text_of(r, *kind));
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&present, Some(&defs), None)?;
            }
        }
        column.close()?;
    }
    group.close()?;
    file.into_inner()
}

/// The non-null values of a column, and each row's definition level (1 present, 0 null).
fn present<'a, T>(
    values: impl Iterator<Item = Option<&'a RawValue>>,
    defs: &mut Vec<i16>,
    convert: impl Fn(&RawValue) -> Option<T>,
) -> Vec<T> {
    let mut out = Vec::new();
    for value in values {
        match value.and_then(&convert) {
            Some(v) => {
                out.push(v);
                defs.push(1);
            }
            None => defs.push(0),
        }
    }
    out
}

/// The schema of one optional column.
fn column_type(name: &str, kind: ColumnType) -> Result<Type, ParquetError> {
    let (physical, logical) = match kind {
        ColumnType::Boolean => (PhysicalType::BOOLEAN, None),
        ColumnType::Int64 => (PhysicalType::INT64, None),
        ColumnType::Double => (PhysicalType::DOUBLE, None),
        ColumnType::String => (PhysicalType::BYTE_ARRAY, Some(LogicalType::String)),
        ColumnType::Json => (PhysicalType::BYTE_ARRAY, Some(LogicalType::Json)),
    };
    Type::primitive_type_builder(name, physical)
        .with_repetition(Repetition::OPTIONAL)
        .with_logical_type(logical)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    /// A row as (column, value) pairs.
    type Row = Vec<(String, Field)>;

    /// The rows of a Parquet file, and its columns with their types.
    fn read(body: Vec<u8>) -> (Vec<Row>, Vec<(String, String)>) {
        let reader = SerializedFileReader::new(bytes::Bytes::from(body)).unwrap();
        let schema = reader.metadata().file_metadata().schema_descr();
        let types = schema
            .columns()
            .iter()
            .map(|c| {
                let t = match c.logical_type_ref() {
                    Some(l) => format!("{:?}", l),
                    None => format!("{}", c.physical_type()),
                };
                (c.name().to_string(), t)
            })
            .collect();
        let rows = reader
            .get_row_iter(None)
            .unwrap()
            .map(|row| {
                row.unwrap()
                    .get_column_iter()
                    .map(|(n, f)| (n.clone(), f.clone()))
                    .collect()
            })
            .collect();
        (rows, types)
    }

    fn encode_all(values: &[&str], layout: &Layout) -> Encoded {
        encode(
            values.iter().enumerate().map(|(i, v)| (i, v.as_bytes())),
            layout,
        )
        .unwrap()
    }

    fn column(name: &str, kind: ColumnType) -> ParquetColumn {
        ParquetColumn {
            name: name.into(),
            kind,
        }
    }

    #[test]
    fn inferred_columns_are_the_fields_typed_from_their_values() {
        let encoded = encode_all(
            &[
                r#"{"id": 1, "region": "eu", "amount": 10, "paid": true, "tags": ["a"]}"#,
                r#"{"id": 2, "region": "us", "amount": 2.5, "note": null}"#,
                r#"{"id": 3, "region": 7, "amount": 1e2, "paid": false, "extra": {"k": 1}}"#,
            ],
            &Layout::Inferred,
        );
        assert!(encoded.refused.is_empty());
        assert_eq!(encoded.rows, 3);
        let (rows, types) = read(encoded.body);
        assert_eq!(
            types,
            vec![
                ("amount".into(), "DOUBLE".into()),
                ("extra".into(), "Json".into()),
                ("id".into(), "INT64".into()),
                ("note".into(), "String".into()),
                ("paid".into(), "BOOLEAN".into()),
                // A string in one record and a number in another: JSON text.
                ("region".into(), "Json".into()),
                ("tags".into(), "Json".into()),
            ]
        );
        let field = |row: usize, name: &str| {
            rows[row]
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, f)| f.clone())
                .unwrap()
        };
        assert_eq!(field(0, "amount"), Field::Double(10.0));
        assert_eq!(field(1, "amount"), Field::Double(2.5));
        assert_eq!(field(2, "amount"), Field::Double(100.0));
        assert_eq!(field(2, "id"), Field::Long(3));
        assert_eq!(field(0, "paid"), Field::Bool(true));
        assert_eq!(field(1, "paid"), Field::Null);
        assert_eq!(field(1, "note"), Field::Null);
        assert_eq!(field(0, "region"), Field::Str("\"eu\"".into()));
        assert_eq!(field(2, "region"), Field::Str("7".into()));
        assert_eq!(field(0, "tags"), Field::Str("[\"a\"]".into()));
        assert_eq!(field(2, "extra"), Field::Str("{\"k\": 1}".into()));
        assert_eq!(field(1, "extra"), Field::Null);
    }

    #[test]
    fn integers_beyond_64_bits_keep_their_digits_as_json() {
        let encoded = encode_all(
            &[r#"{"n": 18446744073709551616}"#, r#"{"n": 5}"#],
            &Layout::Inferred,
        );
        let (rows, types) = read(encoded.body);
        assert_eq!(types, vec![("n".into(), "Json".into())]);
        assert_eq!(rows[0][0].1, Field::Str("18446744073709551616".into()));
        assert_eq!(rows[1][0].1, Field::Str("5".into()));
    }

    #[test]
    fn the_same_records_make_the_same_bytes() {
        let values = [r#"{"a": 1, "b": "x"}"#, r#"{"b": "y", "a": 2}"#];
        let first = encode_all(&values, &Layout::Inferred);
        let again = encode_all(&values, &Layout::Inferred);
        assert!(!first.body.is_empty());
        assert_eq!(first.body, again.body);
    }

    #[test]
    fn configured_columns_refuse_what_does_not_fit_and_leave_out_other_fields() {
        let layout = Layout::new(Some(&[
            column("id", ColumnType::Int64),
            column("region", ColumnType::String),
            column("amount", ColumnType::Double),
            column("raw", ColumnType::Json),
        ]))
        .unwrap();
        let encoded = encode_all(
            &[
                r#"{"id": 1, "region": "eu", "amount": 3, "raw": {"x": [1]}, "other": 1}"#,
                r#"{"id": "two", "region": "us"}"#,
                r#"[1, 2]"#,
                r#"{"id": 4, "region": "e\u0075", "raw": "s"}"#,
                r#"{"id": 1.5}"#,
            ],
            &layout,
        );
        let refused: Vec<usize> = encoded.refused.iter().map(|(i, _)| *i).collect();
        assert_eq!(refused, vec![1, 2, 4]);
        assert!(
            encoded.refused[0].1.contains("\"id\"") && encoded.refused[0].1.contains("int64"),
            "{:?}",
            encoded.refused[0]
        );
        assert!(
            encoded.refused[1].1.contains("JSON object"),
            "{:?}",
            encoded.refused[1]
        );
        assert_eq!(encoded.rows, 2);
        let (rows, types) = read(encoded.body);
        let names: Vec<&str> = types.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["id", "region", "amount", "raw"]);
        assert_eq!(
            rows[0].iter().map(|(_, f)| f.clone()).collect::<Vec<_>>(),
            vec![
                Field::Long(1),
                Field::Str("eu".into()),
                Field::Double(3.0),
                Field::Str("{\"x\": [1]}".into()),
            ]
        );
        assert_eq!(
            rows[1].iter().map(|(_, f)| f.clone()).collect::<Vec<_>>(),
            vec![
                Field::Long(4),
                Field::Str("eu".into()),
                Field::Null,
                Field::Str("\"s\"".into()),
            ]
        );
    }

    #[test]
    fn values_that_are_not_objects_are_refused_and_nothing_is_written_without_rows() {
        let encoded = encode_all(&["1", "not json", "\"s\""], &Layout::Inferred);
        assert_eq!(encoded.rows, 0);
        assert!(encoded.body.is_empty());
        assert_eq!(encoded.refused.len(), 3);
        assert!(
            encoded.refused[1].1.contains("not JSON"),
            "{:?}",
            encoded.refused
        );
    }

    #[test]
    fn records_keyed_by_data_are_refused_an_inferred_layout_of_too_many_columns() {
        let values: Vec<String> = (0..=MAX_INFERRED_COLUMNS)
            .map(|i| format!(r#"{{"id-{i}": 1}}"#))
            .collect();
        let err = encode(
            values.iter().enumerate().map(|(i, v)| (i, v.as_bytes())),
            &Layout::Inferred,
        )
        .unwrap_err();
        assert!(err.to_string().contains("s3.parquet.columns"), "{err}");
    }

    #[test]
    fn a_column_named_twice_is_refused() {
        let err = Layout::new(Some(&[
            column("id", ColumnType::Int64),
            column("id", ColumnType::String),
        ]))
        .unwrap_err();
        assert!(err.contains("\"id\" twice"), "{err}");
    }
}
