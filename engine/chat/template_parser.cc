#include "engine/chat/template_parser.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/tokenizer/unicode.h"

namespace squeeze::jinja {
namespace {

absl::Status SyntaxError(int line, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("chat template line ", line, ": ", what));
}

// ---- chunks: text and the contents of {{ }} / {% %} tags, whitespace control applied --------

struct Chunk {
  enum class Kind { kText, kVariable, kBlock } kind;
  std::string content;
  int line = 1;
};

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// Python str.rstrip() for the ASCII whitespace templates contain.
void RStrip(std::string* s) {
  while (!s->empty() && IsSpace(s->back())) s->pop_back();
}

int CountLines(absl::string_view s) {
  return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
}

absl::StatusOr<std::vector<Chunk>> SplitChunks(std::string source) {
  // Newlines normalised to \n, one trailing newline dropped (keep_trailing_newline=False).
  std::string normalized;
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      normalized.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      normalized.push_back(source[i]);
    }
  }
  if (!normalized.empty() && normalized.back() == '\n') normalized.pop_back();
  const std::string& s = normalized;

  std::vector<Chunk> chunks;
  size_t pos = 0;
  int line = 1;
  bool line_starting = true;  // the previous tag's match ended with a newline (or start)
  while (pos < s.size()) {
    size_t open = pos;
    while (true) {
      open = s.find('{', open);
      if (open == std::string::npos || open + 1 >= s.size()) {
        open = std::string::npos;
        break;
      }
      const char c = s[open + 1];
      if (c == '{' || c == '%' || c == '#') break;
      ++open;
    }
    std::string text = s.substr(pos, open == std::string::npos ? std::string::npos : open - pos);
    const int text_line = line;
    line += CountLines(text);
    if (open == std::string::npos) {
      if (!text.empty()) chunks.push_back({Chunk::Kind::kText, std::move(text), text_line});
      break;
    }
    const char kind = s[open + 1];
    size_t body = open + 2;
    char sign = 0;
    if (body < s.size() && (s[body] == '-' || s[body] == '+')) sign = s[body++];
    if (sign == '-') {
      RStrip(&text);
    } else if (sign != '+' && kind != '{') {
      // lstrip_blocks: only spaces and tabs between the line start and a block or comment.
      const size_t nl = text.rfind('\n');
      const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      if ((nl != std::string::npos || line_starting) && l_pos < text.size() &&
          text.find_first_not_of(" \t", l_pos) == std::string::npos) {
        text.resize(l_pos);
      }
    }
    if (!text.empty()) chunks.push_back({Chunk::Kind::kText, std::move(text), text_line});

    const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    // The end of the tag: the first `close` outside string literals (comments have none).
    size_t end = body;
    char quote = 0;
    for (; end < s.size(); ++end) {
      if (kind != '#' && quote == 0 && (s[end] == '\'' || s[end] == '"')) {
        quote = s[end];
      } else if (quote != 0) {
        if (s[end] == '\\') {
          ++end;
        } else if (s[end] == quote) {
          quote = 0;
        }
      } else if (s.compare(end, 2, close) == 0) {
        break;
      }
    }
    if (end >= s.size()) {
      return SyntaxError(line, absl::StrCat("'{", std::string(1, kind), "' is never closed"));
    }
    size_t content_end = end;
    char end_sign = 0;
    if (content_end > body && (s[content_end - 1] == '-' || s[content_end - 1] == '+')) {
      end_sign = s[--content_end];
    }
    const std::string content = s.substr(body, content_end - body);
    const int tag_line = line;
    line += CountLines(s.substr(open, end + 2 - open));
    pos = end + 2;
    if (end_sign == '-') {
      while (pos < s.size() && IsSpace(s[pos])) {
        if (s[pos] == '\n') ++line;
        ++pos;
      }
    } else if (kind != '{' && end_sign != '+' && pos < s.size() && s[pos] == '\n') {
      ++pos;  // trim_blocks
      ++line;
    }
    line_starting = pos > 0 && s[pos - 1] == '\n';
    if (kind == '#') continue;
    chunks.push_back(
        {kind == '{' ? Chunk::Kind::kVariable : Chunk::Kind::kBlock, content, tag_line});
  }
  return chunks;
}

// ---- expression tokens ----------------------------------------------------------------------

struct Token {
  enum class Kind { kName, kString, kInt, kFloat, kOp, kEnd } kind;
  std::string text;  // name, operator, or the unescaped string
  int64_t i = 0;
  double f = 0.0;
};

// Python string-literal escapes (what jinja2 decodes with "unicode-escape").
absl::StatusOr<std::string> Unescape(absl::string_view raw, int line) {
  std::string out;
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] != '\\' || i + 1 == raw.size()) {
      out.push_back(raw[i]);
      continue;
    }
    const char c = raw[++i];
    auto hex = [&](size_t digits) -> absl::StatusOr<char32_t> {
      if (i + digits >= raw.size())
        return SyntaxError(line, "truncated escape in a string literal");
      const std::string h(raw.substr(i + 1, digits));
      char* endp = nullptr;
      const unsigned long v = std::strtoul(h.c_str(), &endp, 16);
      if (h.size() != digits || *endp != '\0') {
        return SyntaxError(line, "bad escape in a string literal");
      }
      i += digits;
      return static_cast<char32_t>(v);
    };
    switch (c) {
      case 'n':
        out.push_back('\n');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case '\\':
      case '\'':
      case '"':
        out.push_back(c);
        break;
      case '\n':  // line continuation
        break;
      case 'a':
        out.push_back('\a');
        break;
      case 'b':
        out.push_back('\b');
        break;
      case 'f':
        out.push_back('\f');
        break;
      case 'v':
        out.push_back('\v');
        break;
      case '0':
        out.push_back('\0');
        break;
      case 'x':
      case 'u':
      case 'U': {
        ASSIGN_OR_RETURN(char32_t cp, hex(c == 'x' ? 2 : c == 'u' ? 4 : 8));
        unicode::AppendUtf8(cp, &out);
        break;
      }
      default:  // Python keeps unknown escapes as written
        out.push_back('\\');
        out.push_back(c);
    }
  }
  return out;
}

absl::StatusOr<std::vector<Token>> Lex(absl::string_view s, int line) {
  std::vector<Token> tokens;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (IsSpace(c)) {
      ++i;
      continue;
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      tokens.push_back({Token::Kind::kName, std::string(s.substr(i, j - i))});
      i = j;
      continue;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      bool is_float = false;
      while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      if (j + 1 < s.size() && s[j] == '.' && std::isdigit(static_cast<unsigned char>(s[j + 1]))) {
        is_float = true;
        ++j;
        while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
      }
      if (j < s.size() && (s[j] == 'e' || s[j] == 'E')) {
        size_t k = j + 1;
        if (k < s.size() && (s[k] == '+' || s[k] == '-')) ++k;
        if (k < s.size() && std::isdigit(static_cast<unsigned char>(s[k]))) {
          is_float = true;
          j = k;
          while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
        }
      }
      std::string text(s.substr(i, j - i));
      text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
      Token t{is_float ? Token::Kind::kFloat : Token::Kind::kInt, text};
      if (is_float) {
        t.f = std::strtod(text.c_str(), nullptr);
      } else {
        t.i = std::strtoll(text.c_str(), nullptr, 10);
      }
      tokens.push_back(std::move(t));
      i = j;
      continue;
    }
    if (c == '\'' || c == '"') {
      size_t j = i + 1;
      while (j < s.size() && s[j] != c) j += s[j] == '\\' ? 2 : 1;
      if (j >= s.size()) return SyntaxError(line, "unterminated string literal");
      ASSIGN_OR_RETURN(std::string text, Unescape(s.substr(i + 1, j - i - 1), line));
      tokens.push_back({Token::Kind::kString, std::move(text)});
      i = j + 1;
      continue;
    }
    static const char* const kOps[] = {"//", "**", "==", "!=", "<=", ">=", "(", ")", "[",
                                       "]",  "{",  "}",  ".",  ",",  ":",  "|", "~", "+",
                                       "-",  "*",  "/",  "%",  "<",  ">",  "="};
    bool matched = false;
    for (const char* op : kOps) {
      const size_t n = std::char_traits<char>::length(op);
      if (s.compare(i, n, op) == 0) {
        tokens.push_back({Token::Kind::kOp, op});
        i += n;
        matched = true;
        break;
      }
    }
    if (!matched)
      return SyntaxError(line, absl::StrCat("unexpected character '", std::string(1, c), "'"));
  }
  tokens.push_back({Token::Kind::kEnd, ""});
  return tokens;
}

// ---- expressions ----------------------------------------------------------------------------

class ExprParser {
 public:
  ExprParser(std::vector<Token> tokens, int line) : t_(std::move(tokens)), line_(line) {}

  bool AtEnd() const { return t_[p_].kind == Token::Kind::kEnd; }
  bool IsName(absl::string_view name) const {
    return t_[p_].kind == Token::Kind::kName && t_[p_].text == name;
  }
  bool IsOp(absl::string_view op) const {
    return t_[p_].kind == Token::Kind::kOp && t_[p_].text == op;
  }
  absl::Status Expect(absl::string_view op) {
    if (!IsOp(op)) return Error(absl::StrCat("expected '", op, "'"));
    ++p_;
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> Name() {
    if (t_[p_].kind != Token::Kind::kName) return Error("expected a name");
    return t_[p_++].text;
  }
  absl::Status ExpectEnd() {
    if (!AtEnd()) return Error(absl::StrCat("unexpected '", t_[p_].text, "'"));
    return absl::OkStatus();
  }
  absl::Status Error(absl::string_view what) const {
    return SyntaxError(line_, absl::StrCat(what, AtEnd() ? " at the end of the tag" : ""));
  }

  // expression := or ["if" or ["else" expression]]
  absl::StatusOr<ExprPtr> Expression() {
    ASSIGN_OR_RETURN(ExprPtr value, Or());
    if (!IsName("if")) return value;
    ++p_;
    ASSIGN_OR_RETURN(ExprPtr cond, Or());
    ExprPtr otherwise;
    if (IsName("else")) {
      ++p_;
      ASSIGN_OR_RETURN(otherwise, Expression());
    }
    ExprPtr e = Make(Expr::Type::kConditional);
    e->args.push_back(std::move(value));
    e->args.push_back(std::move(cond));
    e->args.push_back(std::move(otherwise));
    return e;
  }

 private:
  ExprPtr Make(Expr::Type type, std::string name = "") {
    auto e = std::make_unique<Expr>();
    e->type = type;
    e->line = line_;
    e->name = std::move(name);
    return e;
  }
  ExprPtr Binary(std::string op, ExprPtr a, ExprPtr b) {
    ExprPtr e = Make(Expr::Type::kBinary, std::move(op));
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }

  absl::StatusOr<ExprPtr> Or() {
    ASSIGN_OR_RETURN(ExprPtr left, And());
    while (IsName("or")) {
      ++p_;
      ASSIGN_OR_RETURN(ExprPtr right, And());
      left = Binary("or", std::move(left), std::move(right));
    }
    return left;
  }
  absl::StatusOr<ExprPtr> And() {
    ASSIGN_OR_RETURN(ExprPtr left, Not());
    while (IsName("and")) {
      ++p_;
      ASSIGN_OR_RETURN(ExprPtr right, Not());
      left = Binary("and", std::move(left), std::move(right));
    }
    return left;
  }
  absl::StatusOr<ExprPtr> Not() {
    if (IsName("not")) {
      ++p_;
      ASSIGN_OR_RETURN(ExprPtr operand, Not());
      ExprPtr e = Make(Expr::Type::kUnary, "not");
      e->args.push_back(std::move(operand));
      return e;
    }
    return Compare();
  }
  absl::StatusOr<ExprPtr> Compare() {
    ASSIGN_OR_RETURN(ExprPtr left, Math1());
    while (true) {
      std::string op;
      if (t_[p_].kind == Token::Kind::kOp &&
          (IsOp("==") || IsOp("!=") || IsOp("<") || IsOp(">") || IsOp("<=") || IsOp(">="))) {
        op = t_[p_++].text;
      } else if (IsName("in")) {
        ++p_;
        op = "in";
      } else if (IsName("not") && t_[p_ + 1].kind == Token::Kind::kName &&
                 t_[p_ + 1].text == "in") {
        p_ += 2;
        op = "notin";
      } else {
        return left;
      }
      ASSIGN_OR_RETURN(ExprPtr right, Math1());
      left = Binary(op, std::move(left), std::move(right));
    }
  }
  absl::StatusOr<ExprPtr> Math1() {
    ASSIGN_OR_RETURN(ExprPtr left, Concat());
    while (IsOp("+") || IsOp("-")) {
      std::string op = t_[p_++].text;
      ASSIGN_OR_RETURN(ExprPtr right, Concat());
      left = Binary(op, std::move(left), std::move(right));
    }
    return left;
  }
  absl::StatusOr<ExprPtr> Concat() {
    ASSIGN_OR_RETURN(ExprPtr left, Math2());
    while (IsOp("~")) {
      ++p_;
      ASSIGN_OR_RETURN(ExprPtr right, Math2());
      left = Binary("~", std::move(left), std::move(right));
    }
    return left;
  }
  absl::StatusOr<ExprPtr> Math2() {
    ASSIGN_OR_RETURN(ExprPtr left, Pow());
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      std::string op = t_[p_++].text;
      ASSIGN_OR_RETURN(ExprPtr right, Pow());
      left = Binary(op, std::move(left), std::move(right));
    }
    return left;
  }
  absl::StatusOr<ExprPtr> Pow() {
    ASSIGN_OR_RETURN(ExprPtr left, Unary(/*with_filter=*/true));
    while (IsOp("**")) {
      ++p_;
      ASSIGN_OR_RETURN(ExprPtr right, Unary(true));
      left = Binary("**", std::move(left), std::move(right));
    }
    return left;
  }
  absl::StatusOr<ExprPtr> Unary(bool with_filter) {
    ExprPtr e;
    if (IsOp("-") || IsOp("+")) {
      std::string op = t_[p_++].text;
      ASSIGN_OR_RETURN(ExprPtr operand, Unary(false));
      e = Make(Expr::Type::kUnary, op);
      e->args.push_back(std::move(operand));
    } else {
      ASSIGN_OR_RETURN(e, Primary());
    }
    ASSIGN_OR_RETURN(e, Postfix(std::move(e)));
    if (with_filter) {
      ASSIGN_OR_RETURN(e, FiltersAndTests(std::move(e)));
    }
    return e;
  }

  absl::Status Arguments(Expr* call) {  // after '('
    while (!IsOp(")")) {
      if (t_[p_].kind == Token::Kind::kName && t_[p_ + 1].kind == Token::Kind::kOp &&
          t_[p_ + 1].text == "=") {
        std::string key = t_[p_].text;
        p_ += 2;
        ASSIGN_OR_RETURN(ExprPtr value, Expression());
        call->kwargs.emplace_back(std::move(key), std::move(value));
      } else {
        if (!call->kwargs.empty()) return Error("positional argument after keyword argument");
        ASSIGN_OR_RETURN(ExprPtr value, Expression());
        call->args.push_back(std::move(value));
      }
      if (!IsOp(",")) break;
      ++p_;
    }
    return Expect(")");
  }

  absl::StatusOr<ExprPtr> Postfix(ExprPtr e) {
    while (true) {
      if (IsOp(".")) {
        ++p_;
        ASSIGN_OR_RETURN(std::string attr, Name());
        ExprPtr a = Make(Expr::Type::kAttribute, attr);
        a->args.push_back(std::move(e));
        e = std::move(a);
      } else if (IsOp("[")) {
        ++p_;
        ExprPtr parts[3];
        bool slice = false;
        for (int k = 0; k < 3; ++k) {
          if (!IsOp(":") && !IsOp("]")) {
            ASSIGN_OR_RETURN(parts[k], Expression());
          }
          if (k < 2 && IsOp(":")) {
            ++p_;
            slice = true;
          } else {
            break;
          }
        }
        RETURN_IF_ERROR(Expect("]"));
        ExprPtr s = Make(slice ? Expr::Type::kSlice : Expr::Type::kSubscript);
        s->args.push_back(std::move(e));
        if (!slice && parts[0] == nullptr) return Error("empty subscript");
        s->args.push_back(std::move(parts[0]));
        if (slice) {
          s->args.push_back(std::move(parts[1]));
          s->args.push_back(std::move(parts[2]));
        }
        e = std::move(s);
      } else if (IsOp("(")) {
        ++p_;
        ExprPtr call = Make(Expr::Type::kCall);
        call->args.push_back(std::move(e));
        RETURN_IF_ERROR(Arguments(call.get()));
        e = std::move(call);
      } else {
        return e;
      }
    }
  }

  absl::StatusOr<ExprPtr> FiltersAndTests(ExprPtr e) {
    while (true) {
      if (IsOp("|")) {
        ++p_;
        ASSIGN_OR_RETURN(std::string name, Name());
        ExprPtr f = Make(Expr::Type::kFilter, name);
        f->args.push_back(std::move(e));
        if (IsOp("(")) {
          ++p_;
          RETURN_IF_ERROR(Arguments(f.get()));
        }
        e = std::move(f);
      } else if (IsName("is")) {
        ++p_;
        ExprPtr t = Make(Expr::Type::kTest);
        if (IsName("not")) {
          ++p_;
          t->negated = true;
        }
        // Test names may be keywords (none, true, false) or operators' words (in).
        if (t_[p_].kind != Token::Kind::kName) return Error("expected a test name after 'is'");
        t->name = t_[p_++].text;
        t->args.push_back(std::move(e));
        if (IsOp("(")) {
          ++p_;
          RETURN_IF_ERROR(Arguments(t.get()));
        } else if (t_[p_].kind == Token::Kind::kString || t_[p_].kind == Token::Kind::kInt ||
                   t_[p_].kind == Token::Kind::kFloat ||
                   (t_[p_].kind == Token::Kind::kName && !IsName("and") && !IsName("or") &&
                    !IsName("if") && !IsName("else") && !IsName("is") && !IsName("in") &&
                    !IsName("not"))) {
          // `is equalto "user"`, `is sameas none`: one argument without parentheses.
          ASSIGN_OR_RETURN(ExprPtr arg, Primary());
          ASSIGN_OR_RETURN(arg, Postfix(std::move(arg)));
          t->args.push_back(std::move(arg));
        }
        e = std::move(t);
      } else {
        return e;
      }
    }
  }

  absl::StatusOr<ExprPtr> Primary() {
    const Token& tok = t_[p_];
    switch (tok.kind) {
      case Token::Kind::kString: {
        // Adjacent literals concatenate, as in Python.
        std::string text;
        while (t_[p_].kind == Token::Kind::kString) text += t_[p_++].text;
        ExprPtr e = Make(Expr::Type::kLiteral);
        e->value = Value::String(std::move(text));
        return e;
      }
      case Token::Kind::kInt: {
        ExprPtr e = Make(Expr::Type::kLiteral);
        e->value = Value::Int(t_[p_++].i);
        return e;
      }
      case Token::Kind::kFloat: {
        ExprPtr e = Make(Expr::Type::kLiteral);
        e->value = Value::Float(t_[p_++].f);
        return e;
      }
      case Token::Kind::kName: {
        const std::string name = t_[p_++].text;
        ExprPtr e = Make(Expr::Type::kLiteral);
        if (name == "true" || name == "True") {
          e->value = Value::Bool(true);
        } else if (name == "false" || name == "False") {
          e->value = Value::Bool(false);
        } else if (name == "none" || name == "None") {
          e->value = Value::None();
        } else {
          e->type = Expr::Type::kName;
          e->name = name;
        }
        return e;
      }
      case Token::Kind::kOp:
        if (tok.text == "(") {
          ++p_;
          ASSIGN_OR_RETURN(ExprPtr e, Expression());
          if (IsOp(",")) return Error("tuples are not supported");
          RETURN_IF_ERROR(Expect(")"));
          return e;
        }
        if (tok.text == "[") {
          ++p_;
          ExprPtr e = Make(Expr::Type::kList);
          while (!IsOp("]")) {
            ASSIGN_OR_RETURN(ExprPtr item, Expression());
            e->args.push_back(std::move(item));
            if (!IsOp(",")) break;
            ++p_;
          }
          RETURN_IF_ERROR(Expect("]"));
          return e;
        }
        if (tok.text == "{") {
          ++p_;
          ExprPtr e = Make(Expr::Type::kDict);
          while (!IsOp("}")) {
            ASSIGN_OR_RETURN(ExprPtr key, Expression());
            RETURN_IF_ERROR(Expect(":"));
            ASSIGN_OR_RETURN(ExprPtr value, Expression());
            e->args.push_back(std::move(key));
            e->args.push_back(std::move(value));
            if (!IsOp(",")) break;
            ++p_;
          }
          RETURN_IF_ERROR(Expect("}"));
          return e;
        }
        break;
      case Token::Kind::kEnd:
        return Error("expected an expression");
    }
    return Error(absl::StrCat("unexpected '", tok.text, "'"));
  }

  std::vector<Token> t_;
  size_t p_ = 0;
  int line_;
};

// ---- statements -----------------------------------------------------------------------------

class TemplateParser {
 public:
  explicit TemplateParser(std::vector<Chunk> chunks) : chunks_(std::move(chunks)) {}

  absl::StatusOr<Body> Parse() {
    Body body;
    std::string end;
    RETURN_IF_ERROR(ParseBody({}, &body, &end));
    return body;
  }

 private:
  // Parses nodes until a block tag whose keyword is in `ends` (stored in *end, with the tag's
  // parser left positioned after the keyword in *tail) or the end of the template.
  absl::Status ParseBody(const std::vector<std::string>& ends, Body* body, std::string* end,
                         std::unique_ptr<ExprParser>* tail = nullptr) {
    while (pos_ < chunks_.size()) {
      const Chunk& c = chunks_[pos_++];
      if (c.kind == Chunk::Kind::kText) {
        auto n = NewNode(Node::Type::kText, c.line);
        n->text = c.content;
        body->push_back(std::move(n));
        continue;
      }
      ASSIGN_OR_RETURN(std::vector<Token> tokens, Lex(c.content, c.line));
      auto p = std::make_unique<ExprParser>(std::move(tokens), c.line);
      if (c.kind == Chunk::Kind::kVariable) {
        auto n = NewNode(Node::Type::kOutput, c.line);
        ASSIGN_OR_RETURN(n->expr, p->Expression());
        RETURN_IF_ERROR(p->ExpectEnd());
        body->push_back(std::move(n));
        continue;
      }
      ASSIGN_OR_RETURN(std::string keyword, p->Name());
      if (std::find(ends.begin(), ends.end(), keyword) != ends.end()) {
        *end = keyword;
        if (tail != nullptr) *tail = std::move(p);
        return absl::OkStatus();
      }
      ASSIGN_OR_RETURN(NodePtr node, Statement(keyword, *p, c.line));
      body->push_back(std::move(node));
    }
    if (!ends.empty()) {
      return SyntaxError(chunks_.empty() ? 1 : chunks_.back().line,
                         absl::StrCat("missing {% ", ends.back(), " %}"));
    }
    return absl::OkStatus();
  }

  static NodePtr NewNode(Node::Type type, int line) {
    auto n = std::make_unique<Node>();
    n->type = type;
    n->line = line;
    return n;
  }

  absl::StatusOr<NodePtr> Statement(const std::string& keyword, ExprParser& p, int line) {
    if (keyword == "if") {
      auto n = NewNode(Node::Type::kIf, line);
      ASSIGN_OR_RETURN(ExprPtr cond, p.Expression());
      RETURN_IF_ERROR(p.ExpectEnd());
      while (true) {
        Body body;
        std::string end;
        std::unique_ptr<ExprParser> tail;
        RETURN_IF_ERROR(ParseBody({"elif", "else", "endif"}, &body, &end, &tail));
        n->branches.emplace_back(std::move(cond), std::move(body));
        if (end == "elif") {
          ASSIGN_OR_RETURN(cond, tail->Expression());
          RETURN_IF_ERROR(tail->ExpectEnd());
          continue;
        }
        RETURN_IF_ERROR(tail->ExpectEnd());
        if (end == "else") {
          RETURN_IF_ERROR(ParseBody({"endif"}, &n->else_body, &end, &tail));
          RETURN_IF_ERROR(tail->ExpectEnd());
        }
        return n;
      }
    }
    if (keyword == "for") {
      auto n = NewNode(Node::Type::kFor, line);
      while (true) {
        ASSIGN_OR_RETURN(std::string target, p.Name());
        n->targets.push_back(std::move(target));
        if (!p.IsOp(",")) break;
        RETURN_IF_ERROR(p.Expect(","));
      }
      if (!p.IsName("in")) return p.Error("expected 'in' in a for tag");
      RETURN_IF_ERROR(p.Name().status());
      // The iterable stops before a filtering "if" (no conditional expression there).
      ASSIGN_OR_RETURN(n->expr, p.Expression());
      if (n->expr->type == Expr::Type::kConditional && n->expr->args[2] == nullptr) {
        n->cond = std::move(n->expr->args[1]);
        n->expr = std::move(n->expr->args[0]);
      }
      RETURN_IF_ERROR(p.ExpectEnd());
      std::string end;
      std::unique_ptr<ExprParser> tail;
      ++loop_depth_;
      absl::Status status = ParseBody({"else", "endfor"}, &n->body, &end, &tail);
      --loop_depth_;
      RETURN_IF_ERROR(status);
      RETURN_IF_ERROR(tail->ExpectEnd());
      if (end == "else") {
        RETURN_IF_ERROR(ParseBody({"endfor"}, &n->else_body, &end, &tail));
        RETURN_IF_ERROR(tail->ExpectEnd());
      }
      return n;
    }
    if (keyword == "set") {
      auto n = NewNode(Node::Type::kSet, line);
      ASSIGN_OR_RETURN(std::string target, p.Name());
      n->targets.push_back(std::move(target));
      if (p.IsOp(".")) {
        RETURN_IF_ERROR(p.Expect("."));
        ASSIGN_OR_RETURN(n->attr, p.Name());
      }
      if (!p.IsOp("="))
        return p.Error("block assignments ({% set x %}...{% endset %}) are not supported");
      RETURN_IF_ERROR(p.Expect("="));
      ASSIGN_OR_RETURN(n->expr, p.Expression());
      RETURN_IF_ERROR(p.ExpectEnd());
      return n;
    }
    if (keyword == "break" || keyword == "continue") {
      RETURN_IF_ERROR(p.ExpectEnd());
      if (loop_depth_ == 0)
        return SyntaxError(line, absl::StrCat("'", keyword, "' outside a loop"));
      return NewNode(keyword == "break" ? Node::Type::kBreak : Node::Type::kContinue, line);
    }
    if (keyword == "generation") {
      RETURN_IF_ERROR(p.ExpectEnd());
      auto n = NewNode(Node::Type::kBlock, line);
      std::string end;
      std::unique_ptr<ExprParser> tail;
      RETURN_IF_ERROR(ParseBody({"endgeneration"}, &n->body, &end, &tail));
      RETURN_IF_ERROR(tail->ExpectEnd());
      return n;
    }
    return SyntaxError(line, absl::StrCat("unsupported tag '", keyword, "'"));
  }

  std::vector<Chunk> chunks_;
  size_t pos_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

absl::StatusOr<Body> ParseTemplate(absl::string_view source) {
  ASSIGN_OR_RETURN(std::vector<Chunk> chunks, SplitChunks(std::string(source)));
  return TemplateParser(std::move(chunks)).Parse();
}

}  // namespace squeeze::jinja
