//! Date Time (0x2A08) and Current Time (0x2A2B).
//!
//! Specifications: Bluetooth SIG GATT Specification Supplement v8, §3.70 "Date Time",
//! §3.62 "Current Time" (with §3.72 "Day Date Time", §3.73 "Day of Week", §3.90 "Exact Time
//! 256"), and the Current Time Service 1.1 §3.1. The same 7-byte Date Time is the time stamp
//! of the Blood Pressure and PLX measurements.
//!
//! Date Time layout (little-endian): year `u16` (1582..=9999, 0 = not known), month `u8`
//! (1..=12, 0 = not known), day `u8` (1..=31, 0 = not known), hours (0..=23), minutes
//! (0..=59), seconds (0..=59).
//!
//! Current Time appends day of week (`u8`, 1 = Monday ..= 7 = Sunday, 0 = not known),
//! Fractions256 (`u8`, 1/256 s) and the Adjust Reason bits.
//!
//! Strictness: a time outside those ranges, or a date that is not in the calendar
//! (2023-02-29), is an error, because readings are identified by their device time stamp and a
//! garbled clock must not be taken for a real one. Leniency: a reserved day-of-week value is
//! read as "not known" (quirk); extra bytes after the last field are ignored (quirk).

use core::fmt;

use serde::Serialize;

use super::bits::bitset;
use super::error::{DecodeError, EncodeError, Quirk};
use super::reader::{Reader, put_u16};

/// A Date Time: a wall-clock time whose date parts may each be "not known".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DateTime {
    /// Year (1582..=9999), `None` when the device sent 0 ("not known").
    pub year: Option<u16>,
    /// Month (1..=12), `None` when not known.
    pub month: Option<u8>,
    /// Day of month (1..=31), `None` when not known.
    pub day: Option<u8>,
    /// Hours since midnight (0..=23).
    pub hours: u8,
    /// Minutes (0..=59).
    pub minutes: u8,
    /// Seconds (0..=59).
    pub seconds: u8,
}

/// Wire size of a Date Time.
pub const DATE_TIME_LEN: usize = 7;

impl DateTime {
    /// A fully known date and time.
    pub const fn new(year: u16, month: u8, day: u8, hours: u8, minutes: u8, seconds: u8) -> Self {
        DateTime {
            year: Some(year),
            month: Some(month),
            day: Some(day),
            hours,
            minutes,
            seconds,
        }
    }

    /// Reads the 7 bytes of a Date Time from `r`.
    pub(crate) fn read(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        let year = r.u16(field)?;
        let [month, day, hours, minutes, seconds] = r.array::<5>(field)?;
        let dt = DateTime {
            year: (year != 0).then_some(year),
            month: (month != 0).then_some(month),
            day: (day != 0).then_some(day),
            hours,
            minutes,
            seconds,
        };
        dt.check()
            .map_err(|(what, value, reason)| DecodeError::InvalidValue {
                field: what,
                value,
                reason,
            })?;
        Ok(dt)
    }

    /// Appends the 7 wire bytes.
    pub(crate) fn write(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.check()
            .map_err(|(field, value, reason)| EncodeError::InvalidValue {
                field,
                value: i64::from(value),
                reason,
            })?;
        put_u16(out, self.year.unwrap_or(0));
        out.extend_from_slice(&[
            self.month.unwrap_or(0),
            self.day.unwrap_or(0),
            self.hours,
            self.minutes,
            self.seconds,
        ]);
        Ok(())
    }

    /// Checks every range the specification sets, and the calendar.
    fn check(&self) -> Result<(), (&'static str, u32, &'static str)> {
        if let Some(y) = self.year
            && !(1582..=9999).contains(&y)
        {
            return Err((
                "date_time.year",
                y.into(),
                "outside 1582..=9999 (0 = not known)",
            ));
        }
        if let Some(m) = self.month
            && !(1..=12).contains(&m)
        {
            return Err((
                "date_time.month",
                m.into(),
                "outside 1..=12 (0 = not known)",
            ));
        }
        if let Some(d) = self.day
            && !(1..=31).contains(&d)
        {
            return Err(("date_time.day", d.into(), "outside 1..=31 (0 = not known)"));
        }
        if self.hours > 23 {
            return Err(("date_time.hours", self.hours.into(), "outside 0..=23"));
        }
        if self.minutes > 59 {
            return Err(("date_time.minutes", self.minutes.into(), "outside 0..=59"));
        }
        if self.seconds > 59 {
            return Err(("date_time.seconds", self.seconds.into(), "outside 0..=59"));
        }
        if let (Some(m), Some(d)) = (self.month, self.day) {
            // Without a year, allow 29 February.
            let max = match (self.year, time::Month::try_from(m)) {
                (Some(y), Ok(month)) => month.length(i32::from(y)),
                (None, Ok(month)) => month.length(2000),
                (_, Err(_)) => 31,
            };
            if d > max {
                return Err(("date_time.day", d.into(), "not a day of that month"));
            }
        }
        Ok(())
    }

    /// The time as a calendar date-time, when year, month and day are all known.
    pub fn to_primitive(&self) -> Option<time::PrimitiveDateTime> {
        let month = time::Month::try_from(self.month?).ok()?;
        let date = time::Date::from_calendar_date(i32::from(self.year?), month, self.day?).ok()?;
        let t = time::Time::from_hms(self.hours, self.minutes, self.seconds).ok()?;
        Some(time::PrimitiveDateTime::new(date, t))
    }
}

/// ISO 8601 style, with `X` for each digit of a part that is not known:
/// `2024-11-29T23:08:57`, `XXXX-04-17T20:41:59`.
impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.year {
            Some(y) => write!(f, "{y:04}-")?,
            None => f.write_str("XXXX-")?,
        }
        match self.month {
            Some(m) => write!(f, "{m:02}-")?,
            None => f.write_str("XX-")?,
        }
        match self.day {
            Some(d) => write!(f, "{d:02}")?,
            None => f.write_str("XX")?,
        }
        write!(
            f,
            "T{:02}:{:02}:{:02}",
            self.hours, self.minutes, self.seconds
        )
    }
}

impl Serialize for DateTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The Date Time characteristic (0x2A08).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DateTimeCharacteristic {
    /// The date and time.
    pub value: DateTime,
    /// Rules the device bent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quirks: Vec<Quirk>,
}

impl DateTimeCharacteristic {
    /// Decodes a Date Time value.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let value = DateTime::read(&mut r, "date_time")?;
        let mut quirks = Vec::new();
        r.finish(&mut quirks);
        Ok(DateTimeCharacteristic { value, quirks })
    }

    /// Encodes the 7 wire bytes.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(DATE_TIME_LEN);
        self.value.write(&mut out)?;
        Ok(out)
    }
}

/// Day of Week (GATT Specification Supplement §3.73).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DayOfWeek {
    /// 0, or a reserved value (8..=255, recorded as a quirk).
    Unknown,
    /// 1.
    Monday,
    /// 2.
    Tuesday,
    /// 3.
    Wednesday,
    /// 4.
    Thursday,
    /// 5.
    Friday,
    /// 6.
    Saturday,
    /// 7.
    Sunday,
}

impl DayOfWeek {
    const ORDER: [DayOfWeek; 8] = [
        DayOfWeek::Unknown,
        DayOfWeek::Monday,
        DayOfWeek::Tuesday,
        DayOfWeek::Wednesday,
        DayOfWeek::Thursday,
        DayOfWeek::Friday,
        DayOfWeek::Saturday,
        DayOfWeek::Sunday,
    ];

    /// The day for a wire value, `None` for a reserved value.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ORDER.get(usize::from(v)).copied()
    }

    /// The wire value.
    pub fn to_u8(self) -> u8 {
        self as u8
    }
}

bitset! {
    /// Adjust Reason of Current Time (GATT Specification Supplement §3.62, Table 3.106).
    pub struct AdjustReason(u8) {
        /// Bit 0: Manual time update.
        MANUAL_TIME_UPDATE = 0 => "manual_time_update",
        /// Bit 1: External reference time update.
        EXTERNAL_REFERENCE_TIME_UPDATE = 1 => "external_reference_time_update",
        /// Bit 2: Change of time zone.
        CHANGE_OF_TIME_ZONE = 2 => "change_of_time_zone",
        /// Bit 3: Change of DST (daylight savings time).
        CHANGE_OF_DST = 3 => "change_of_dst",
    }
}

/// The Current Time characteristic (0x2A2B): Exact Time 256 plus the Adjust Reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CurrentTime {
    /// Date and time.
    pub date_time: DateTime,
    /// Day of week.
    pub day_of_week: DayOfWeek,
    /// Fractions of a second in 1/256 s.
    pub fractions256: u8,
    /// Why the time was last adjusted.
    pub adjust_reason: AdjustReason,
    /// Rules the device bent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quirks: Vec<Quirk>,
}

/// Wire size of Current Time.
pub const CURRENT_TIME_LEN: usize = 10;

impl CurrentTime {
    /// Decodes a Current Time value.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let mut quirks = Vec::new();
        let date_time = DateTime::read(&mut r, "date_time")?;
        let dow = r.u8("day_of_week")?;
        let day_of_week = DayOfWeek::from_u8(dow).unwrap_or_else(|| {
            quirks.push(Quirk::ReservedValue {
                field: "day_of_week",
                value: dow.into(),
            });
            DayOfWeek::Unknown
        });
        let fractions256 = r.u8("fractions256")?;
        let (adjust_reason, reserved) = AdjustReason::from_bits_split(r.u8("adjust_reason")?);
        if reserved != 0 {
            quirks.push(Quirk::ReservedBitsSet {
                field: "adjust_reason",
                bits: reserved.into(),
            });
        }
        r.finish(&mut quirks);
        Ok(CurrentTime {
            date_time,
            day_of_week,
            fractions256,
            adjust_reason,
            quirks,
        })
    }

    /// Encodes the 10 wire bytes.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(CURRENT_TIME_LEN);
        self.date_time.write(&mut out)?;
        out.extend_from_slice(&[
            self.day_of_week.to_u8(),
            self.fractions256,
            self.adjust_reason.bits(),
        ]);
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Any valid Date Time, with each date part sometimes unknown.
    pub(crate) fn any_date_time() -> impl Strategy<Value = DateTime> {
        (
            prop::option::of(1582u16..=9999),
            prop::option::of(1u8..=12),
            prop::option::of(1u8..=28),
            0u8..=23,
            0u8..=59,
            0u8..=59,
        )
            .prop_map(|(year, month, day, hours, minutes, seconds)| DateTime {
                year,
                month,
                day,
                hours,
                minutes,
                seconds,
            })
    }

    #[test]
    fn decodes_a_known_date() {
        // NordicSemiconductor/Android-BLE-Common-Library DateTimeDataCallbackTest:
        // E2 07 04 11 0F 33 00 = 2018-04-17 15:51:00.
        let d = DateTimeCharacteristic::decode(&[0xE2, 0x07, 4, 17, 15, 51, 0]);
        assert_eq!(
            d.map(|d| d.value.to_string()),
            Ok("2018-04-17T15:51:00".to_owned())
        );
    }

    #[test]
    fn zero_date_parts_mean_not_known() {
        let d = DateTimeCharacteristic::decode(&[0, 0, 0, 0, 18, 26, 32]).map(|d| d.value);
        assert_eq!(
            d,
            Ok(DateTime {
                year: None,
                month: None,
                day: None,
                hours: 18,
                minutes: 26,
                seconds: 32
            })
        );
        assert_eq!(
            d.clone().map(|d| d.to_string()),
            Ok("XXXX-XX-XXT18:26:32".to_owned())
        );
        assert_eq!(d.map(|d| d.to_primitive()), Ok(None));
    }

    #[test]
    fn impossible_times_are_errors_naming_the_field() {
        assert_eq!(
            DateTimeCharacteristic::decode(&[0xE2, 0x07, 13, 1, 0, 0, 0]),
            Err(DecodeError::InvalidValue {
                field: "date_time.month",
                value: 13,
                reason: "outside 1..=12 (0 = not known)"
            })
        );
        assert!(DateTimeCharacteristic::decode(&[0xE2, 0x07, 1, 1, 24, 0, 0]).is_err());
        // 2023-02-29 does not exist; 2024-02-29 does.
        assert!(DateTimeCharacteristic::decode(&[0xE7, 0x07, 2, 29, 0, 0, 0]).is_err());
        assert!(DateTimeCharacteristic::decode(&[0xE8, 0x07, 2, 29, 0, 0, 0]).is_ok());
        // 0x062D = 1581, before the range the specification allows.
        assert!(DateTimeCharacteristic::decode(&[0x2D, 0x06, 1, 1, 0, 0, 0]).is_err());
        assert!(DateTimeCharacteristic::decode(&[0x2E, 0x06, 1, 1, 0, 0, 0]).is_ok());
    }

    #[test]
    fn truncated_date_time() {
        assert_eq!(
            DateTimeCharacteristic::decode(&[0xE2, 0x07, 4, 17, 15, 51]),
            Err(DecodeError::Truncated {
                field: "date_time",
                offset: 2,
                needed: 5,
                got: 4
            })
        );
    }

    #[test]
    fn current_time_vector() {
        // PureSwift/Bluetooth Tests/BluetoothTests/GATTCharacteristicTests.swift testCurrentTime:
        // 1995-04-24 12:05:30, day 7, fractions 245, adjust reason 0b1111.
        let ct = CurrentTime::decode(&[203, 7, 4, 24, 12, 5, 30, 7, 245, 0b0000_1111]);
        let Ok(ct) = ct else {
            panic!("decode failed: {ct:?}")
        };
        assert_eq!(ct.date_time, DateTime::new(1995, 4, 24, 12, 5, 30));
        assert_eq!(ct.day_of_week, DayOfWeek::Sunday);
        assert_eq!(ct.fractions256, 245);
        assert_eq!(ct.adjust_reason.names().count(), 4);
        assert!(ct.quirks.is_empty());
    }

    #[test]
    fn current_time_reserved_values_are_quirks() {
        let ct = CurrentTime::decode(&[203, 7, 4, 24, 12, 5, 30, 9, 0, 0xF1]);
        let Ok(ct) = ct else {
            panic!("decode failed: {ct:?}")
        };
        assert_eq!(ct.day_of_week, DayOfWeek::Unknown);
        assert_eq!(ct.adjust_reason, AdjustReason::MANUAL_TIME_UPDATE);
        assert_eq!(
            ct.quirks,
            vec![
                Quirk::ReservedValue {
                    field: "day_of_week",
                    value: 9
                },
                Quirk::ReservedBitsSet {
                    field: "adjust_reason",
                    bits: 0xF0
                }
            ]
        );
    }

    proptest! {
        #[test]
        fn date_time_round_trips(value in any_date_time()) {
            let c = DateTimeCharacteristic { value, quirks: Vec::new() };
            let bytes = c.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(DateTimeCharacteristic::decode(&bytes), Ok(c));
        }

        #[test]
        fn current_time_round_trips(
            date_time in any_date_time(),
            dow in 0u8..=7,
            fractions256 in any::<u8>(),
            reason in any::<u8>(),
        ) {
            let c = CurrentTime {
                date_time,
                day_of_week: DayOfWeek::from_u8(dow).unwrap_or(DayOfWeek::Unknown),
                fractions256,
                adjust_reason: AdjustReason::from_bits_split(reason).0,
                quirks: Vec::new(),
            };
            let bytes = c.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(CurrentTime::decode(&bytes), Ok(c));
        }
    }
}
