//! Named bit sets for flags, status and feature fields.
//!
//! Each set keeps only the bits the specification defines; reserved bits are split off on
//! decode (and reported as a quirk by the caller). A set serializes as the list of the names
//! of its bits, in bit order, e.g. `["measurement_ongoing", "fully_qualified_data"]`.

/// Defines a bit set type over an unsigned integer with named bits.
macro_rules! bitset {
    (
        $(#[$meta:meta])*
        pub struct $name:ident($int:ty) {
            $( $(#[$fmeta:meta])* $konst:ident = $bit:literal => $label:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name($int);

        impl $name {
            $( $(#[$fmeta])* pub const $konst: Self = Self(1 << $bit); )*

            /// Every defined bit with its name, in bit order.
            pub const NAMED: &'static [(Self, &'static str)] = &[ $( (Self::$konst, $label), )* ];

            /// The mask of all bits the specification defines.
            pub const DEFINED: $int = 0 $( | (1 << $bit) )*;

            /// The empty set.
            pub const fn empty() -> Self {
                Self(0)
            }

            /// The raw bits.
            pub const fn bits(self) -> $int {
                self.0
            }

            /// Splits raw bits into the defined set and the reserved bits that were set.
            pub const fn from_bits_split(bits: $int) -> (Self, $int) {
                (Self(bits & Self::DEFINED), bits & !Self::DEFINED)
            }

            /// The set, if no reserved bit is set.
            pub const fn from_bits(bits: $int) -> Option<Self> {
                if bits & !Self::DEFINED == 0 { Some(Self(bits)) } else { None }
            }

            /// Whether every bit of `other` is in `self`.
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }

            /// Whether no bit is set.
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }

            /// The names of the bits that are set, in bit order.
            pub fn names(self) -> impl Iterator<Item = &'static str> {
                Self::NAMED
                    .iter()
                    .filter(move |(flag, _)| self.contains(*flag))
                    .map(|(_, name)| *name)
            }
        }

        impl core::ops::BitOr for $name {
            type Output = Self;
            fn bitor(self, rhs: Self) -> Self {
                Self(self.0 | rhs.0)
            }
        }

        impl core::ops::BitOrAssign for $name {
            fn bitor_assign(&mut self, rhs: Self) {
                self.0 |= rhs.0;
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.debug_list().entries(self.names()).finish()
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.names())
            }
        }
    };
}

pub(crate) use bitset;
