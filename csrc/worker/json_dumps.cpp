// pyserve.worker._json: json.dumps(value, indent=2) for the values handlers usually return.
//
// TorchServe answers a handler's dict or list with json.dumps(value, indent=2); with an
// indent Python's json module falls back to its pure-Python encoder, which costs several
// microseconds per answer, more than the rest of the worker's work on a request. This writes
// the same bytes for dict, list, tuple, str, int, float, bool and None (exact types only).
// For anything else it returns None and the caller uses json.dumps itself, so that every
// other value, and every error, is Python's own.
#include <Python.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>

namespace py = pybind11;

namespace {

constexpr int kMaxDepth = 200;  // deeper values go to json.dumps, which detects cycles

class Encoder {
   public:
    // False when a value is not one this encoder knows: the caller falls back.
    bool encode(PyObject* value, int depth) {
        if (depth > kMaxDepth) return false;
        if (value == Py_None) {
            out_ += "null";
        } else if (value == Py_True) {
            out_ += "true";
        } else if (value == Py_False) {
            out_ += "false";
        } else if (PyUnicode_CheckExact(value)) {
            return string(value);
        } else if (PyLong_CheckExact(value)) {
            return integer(value);
        } else if (PyFloat_CheckExact(value)) {
            return real(PyFloat_AS_DOUBLE(value));
        } else if (PyDict_CheckExact(value)) {
            return dict(value, depth);
        } else if (PyList_CheckExact(value) || PyTuple_CheckExact(value)) {
            return sequence(value, depth);
        } else {
            return false;
        }
        return true;
    }

    const std::string& text() const { return out_; }

   private:
    void newline(int depth) {
        out_ += '\n';
        out_.append(static_cast<size_t>(2 * depth), ' ');
    }

    bool string(PyObject* value) {
        if (PyUnicode_READY(value) != 0) return false;
        const int kind = PyUnicode_KIND(value);
        const void* data = PyUnicode_DATA(value);
        const Py_ssize_t length = PyUnicode_GET_LENGTH(value);
        out_ += '"';
        for (Py_ssize_t i = 0; i < length; ++i) {
            const Py_UCS4 c = PyUnicode_READ(kind, data, i);
            switch (c) {
                case '"': out_ += "\\\""; continue;
                case '\\': out_ += "\\\\"; continue;
                case '\n': out_ += "\\n"; continue;
                case '\r': out_ += "\\r"; continue;
                case '\t': out_ += "\\t"; continue;
                case '\b': out_ += "\\b"; continue;
                case '\f': out_ += "\\f"; continue;
                default: break;
            }
            if (c >= 0x20 && c <= 0x7e) {
                out_ += static_cast<char>(c);
            } else if (c <= 0xffff) {
                unicode_escape(c);
            } else {  // a surrogate pair, as ensure_ascii writes it
                const Py_UCS4 v = c - 0x10000;
                unicode_escape(0xd800 | ((v >> 10) & 0x3ff));
                unicode_escape(0xdc00 | (v & 0x3ff));
            }
        }
        out_ += '"';
        return true;
    }

    void unicode_escape(Py_UCS4 c) {
        static const char kHex[] = "0123456789abcdef";
        out_ += "\\u";
        for (int shift = 12; shift >= 0; shift -= 4) out_ += kHex[(c >> shift) & 0xf];
    }

    bool integer(PyObject* value) {
        int overflow = 0;
        const long long small = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (!overflow) {
            if (small == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                return false;
            }
            out_ += std::to_string(small);
            return true;
        }
        PyObject* text = PyObject_Repr(value);  // int.__repr__, as json uses
        if (!text) {
            PyErr_Clear();  // more digits than Python converts: json.dumps raises it itself
            return false;
        }
        Py_ssize_t size = 0;
        const char* utf8 = PyUnicode_AsUTF8AndSize(text, &size);
        if (utf8) out_.append(utf8, static_cast<size_t>(size));
        Py_DECREF(text);
        if (!utf8) PyErr_Clear();
        return utf8 != nullptr;
    }

    bool real(double value) {
        if (std::isnan(value)) {
            out_ += "NaN";
        } else if (std::isinf(value)) {
            out_ += value > 0 ? "Infinity" : "-Infinity";
        } else {
            char* text = PyOS_double_to_string(value, 'r', 0, Py_DTSF_ADD_DOT_0, nullptr);
            if (!text) {
                PyErr_Clear();
                return false;
            }
            out_ += text;
            PyMem_Free(text);
        }
        return true;
    }

    bool dict(PyObject* value, int depth) {
        if (PyDict_GET_SIZE(value) == 0) {
            out_ += "{}";
            return true;
        }
        out_ += '{';
        Py_ssize_t position = 0;
        PyObject* key;
        PyObject* item;
        bool first = true;
        while (PyDict_Next(value, &position, &key, &item)) {
            if (!PyUnicode_CheckExact(key)) return false;  // json's own key conversions
            if (!first) out_ += ',';
            first = false;
            newline(depth + 1);
            if (!string(key)) return false;
            out_ += ": ";
            if (!encode(item, depth + 1)) return false;
        }
        newline(depth);
        out_ += '}';
        return true;
    }

    bool sequence(PyObject* value, int depth) {
        const Py_ssize_t length = PySequence_Fast_GET_SIZE(value);
        if (length == 0) {
            out_ += "[]";
            return true;
        }
        PyObject** items = PySequence_Fast_ITEMS(value);
        out_ += '[';
        for (Py_ssize_t i = 0; i < length; ++i) {
            if (i) out_ += ',';
            newline(depth + 1);
            if (!encode(items[i], depth + 1)) return false;
        }
        newline(depth);
        out_ += ']';
        return true;
    }

    std::string out_;
};

}  // namespace

PYBIND11_MODULE(_json, m) {
    m.doc() = "json.dumps(value, indent=2) in C++ for the plain values handlers return.";
    m.def(
        "dumps_indent2",
        [](py::handle value) -> py::object {
            Encoder encoder;
            if (!encoder.encode(value.ptr(), 0)) return py::none();
            return py::bytes(encoder.text());
        },
        py::arg("value"),
        "The UTF-8 bytes of json.dumps(value, indent=2), or None for a value it does not\n"
        "encode itself (anything but exact dict, list, tuple, str, int, float, bool, None).");
}
