package arrowio

import (
	"fmt"
	"math"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
)

// kind classifies the column types the operators understand.
type kind int

const (
	kindOther  kind = iota
	kindInt         // signed integers, read as int64
	kindUint        // unsigned integers, read as uint64
	kindFloat       // float32 and float64, read as float64
	kindString      // string and large_string
)

// accessor reads the values of one array as the widest Go type of its kind.
type accessor struct {
	kind kind
	i    func(int) int64
	u    func(int) uint64
	f    func(int) float64
	s    func(int) string
}

func ints[T int8 | int16 | int32 | int64](v []T) func(int) int64 {
	return func(i int) int64 { return int64(v[i]) }
}

func uints[T uint8 | uint16 | uint32 | uint64](v []T) func(int) uint64 {
	return func(i int) uint64 { return uint64(v[i]) }
}

func floats[T float32 | float64](v []T) func(int) float64 {
	return func(i int) float64 { return float64(v[i]) }
}

// access returns an accessor for arr, or an error naming its type.
func access(arr arrow.Array) (accessor, error) {
	switch a := arr.(type) {
	case *array.Int8:
		return accessor{kind: kindInt, i: ints(a.Int8Values())}, nil
	case *array.Int16:
		return accessor{kind: kindInt, i: ints(a.Int16Values())}, nil
	case *array.Int32:
		return accessor{kind: kindInt, i: ints(a.Int32Values())}, nil
	case *array.Int64:
		return accessor{kind: kindInt, i: ints(a.Int64Values())}, nil
	case *array.Uint8:
		return accessor{kind: kindUint, u: uints(a.Uint8Values())}, nil
	case *array.Uint16:
		return accessor{kind: kindUint, u: uints(a.Uint16Values())}, nil
	case *array.Uint32:
		return accessor{kind: kindUint, u: uints(a.Uint32Values())}, nil
	case *array.Uint64:
		return accessor{kind: kindUint, u: uints(a.Uint64Values())}, nil
	case *array.Float32:
		return accessor{kind: kindFloat, f: floats(a.Float32Values())}, nil
	case *array.Float64:
		return accessor{kind: kindFloat, f: floats(a.Float64Values())}, nil
	case *array.String:
		return accessor{kind: kindString, s: a.Value}, nil
	case *array.LargeString:
		return accessor{kind: kindString, s: a.Value}, nil
	}
	return accessor{}, fmt.Errorf("%w: %s", ErrUnsupportedType, arr.DataType())
}

// number returns element i as a float64 for the numeric kinds.
func (a accessor) number(i int) float64 {
	switch a.kind {
	case kindInt:
		return float64(a.i(i))
	case kindUint:
		return float64(a.u(i))
	}
	return a.f(i)
}

func (a accessor) numeric() bool {
	return a.kind == kindInt || a.kind == kindUint || a.kind == kindFloat
}

// hash returns a hash of element i that is the same in every process
// (never seeded), so that workers agree on hash partitions. Integers of
// any width and signedness hash by value; -0.0 hashes as 0.0.
func (a accessor) hash(i int) uint64 {
	switch a.kind {
	case kindInt:
		return mix64(uint64(a.i(i)))
	case kindUint:
		return mix64(a.u(i))
	case kindFloat:
		return hashFloat(a.f(i))
	}
	return fnv1a(a.s(i))
}

func hashFloat(f float64) uint64 {
	if f == 0 {
		f = 0 // -0.0 and 0.0 are equal, so they must hash alike
	}
	return mix64(math.Float64bits(f))
}

// mix64 is the splitmix64 finaliser.
func mix64(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// fnv1a is 64-bit FNV-1a.
func fnv1a(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// HashPartition returns the partition, in [0, nparts), of one value of a
// hash-partitioned column, as hash_partition computes it: v is an integer
// of any Go integer type, a float32/float64 or a string; nil (a null) goes
// to partition 0. It panics if nparts < 1 or v has another type.
func HashPartition(v any, nparts int) int {
	if nparts < 1 {
		panic("arrowio: HashPartition with nparts < 1")
	}
	var h uint64
	switch x := v.(type) {
	case nil:
		return 0
	case string:
		h = fnv1a(x)
	case float32:
		h = hashFloat(float64(x))
	case float64:
		h = hashFloat(x)
	case uint:
		h = mix64(uint64(x))
	case uint64:
		h = mix64(x)
	default:
		n, ok := asInt(v)
		if !ok {
			panic(fmt.Sprintf("arrowio: HashPartition of %T", v))
		}
		h = mix64(uint64(n))
	}
	return int(h % uint64(nparts))
}
