//! A short sequence whose first `N` elements live inline and the rest on the heap.
//!
//! Most addresses, devices and destinations are seen with one or two users, and most users have one or two
//! addresses, devices, countries and destinations: kept inline, the common case needs no allocation and, more
//! importantly for speed, no pointer to follow to memory that is not in the cache. It serialises exactly as a `Vec`
//! of the same elements, so snapshots do not change.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A sequence of `T`, in insertion order, the first `N` inline.
#[derive(Clone)]
pub struct Small<T, const N: usize> {
    /// How many of `inline` are used; the heap part is used only when it is `N`.
    len: u8,
    inline: [T; N],
    /// Boxed twice so that the common case, nothing spilled, costs 8 bytes here rather than a `Vec`'s 24.
    #[allow(clippy::box_collection)]
    spill: Option<Box<Vec<T>>>,
}

impl<T: Copy + Default, const N: usize> Default for Small<T, N> {
    fn default() -> Self {
        const { assert!(N > 0 && N < 256, "inline length must fit in a u8") };
        Small { len: 0, inline: [T::default(); N], spill: None }
    }
}

impl<T: Copy + Default, const N: usize> Small<T, N> {
    /// The elements, in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.inline[..usize::from(self.len)].iter().chain(self.spill.iter().flat_map(|v| v.iter()))
    }

    /// The elements, in order, to change in place.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.inline[..usize::from(self.len)].iter_mut().chain(self.spill.iter_mut().flat_map(|v| v.iter_mut()))
    }

    /// Appends `x`.
    pub fn push(&mut self, x: T) {
        let len = usize::from(self.len);
        if len < N {
            self.inline[len] = x;
            self.len += 1;
        } else {
            self.spill.get_or_insert_default().push(x);
        }
    }

    /// How many elements there are.
    pub fn len(&self) -> usize {
        usize::from(self.len) + self.spill.as_ref().map_or(0, |v| v.len())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq for Small<T, N> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<T: Copy + Default + Eq, const N: usize> Eq for Small<T, N> {}

impl<T: Copy + Default + fmt::Debug, const N: usize> fmt::Debug for Small<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Copy + Default + Serialize, const N: usize> Serialize for Small<T, N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A sequence with its length first, exactly as a `Vec<T>` serialises.
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for x in self.iter() {
            seq.serialize_element(x)?;
        }
        seq.end()
    }
}

impl<'de, T: Copy + Default + Deserialize<'de>, const N: usize> Deserialize<'de> for Small<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::<T>::deserialize(d)?;
        let mut small = Small::default();
        for x in items {
            small.push(x);
        }
        Ok(small)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_equality_and_bytes_are_those_of_a_vec() {
        let mut small = Small::<(u64, u32), 2>::default();
        let mut vec = Vec::new();
        for i in 0..5u64 {
            small.push((i * 7, i as u32));
            vec.push((i * 7, i as u32));
            assert_eq!(small.len(), vec.len());
            assert!(small.iter().eq(vec.iter()));
            assert_eq!(postcard::to_stdvec(&small).unwrap(), postcard::to_stdvec(&vec).unwrap());
            let back: Small<(u64, u32), 2> = postcard::from_bytes(&postcard::to_stdvec(&vec).unwrap()).unwrap();
            assert_eq!(back, small);
        }
        for x in small.iter_mut() {
            x.1 += 1;
        }
        assert_eq!(small.iter().map(|x| x.1).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert!(Small::<u8, 2>::default().is_empty());
    }
}
