// Preference data in TRL's formats (train/preference_data.h): layout detection, exact ids of
// hand-made lines (tiny tokenizer: ids written out by hand; the real Llama-3 tokenizer in the
// "assets" suite: ids from the chat tests' verified dialog), prompt + completion equal to the
// whole conversation's rendering (Llama-3, 3.1, ChatML), implicit prompt extraction as TRL's
// extract_prompt does it, each truncation rule, the policy's batches with their completion
// masks, and every malformed line's error naming file:line.
#include <algorithm>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "helpers.h"
#include "models/test_tokenizer_fixtures.h"
#include "models/tokenizer/chat.h"
#include "train/preference_data.h"

using namespace lamina;
using namespace lamina::train;
using tokenizer::ChatFormat;
using tokenizer::Message;
using Ids = std::vector<int32_t>;

namespace {

// Ids of the tiny tokenizer (test_tokenizer_tiny.h): a byte is its own id; " w" = 262, " wo" =
// 263, "ab" = 256; the Llama-3 specials from 300, ChatML's added here.
constexpr int32_t kBos = 300, kEos = 301, kStartHeader = 302, kEndHeader = 303, kEot = 304;
constexpr int32_t kImStart = 310, kImEnd = 311;
const Ids kUser = {'u', 's', 'e', 'r'};
const Ids kAssistant = {'a', 's', 's', 'i', 's', 't', 'a', 'n', 't'};

const tokenizer::Tokenizer& tiny() {
  static const tokenizer::Tokenizer tok = [] {
    testing::TinyTokenizerSpec spec;
    spec.added.emplace_back("<|im_start|>", kImStart, true);
    spec.added.emplace_back("<|im_end|>", kImEnd, true);
    return testing::tiny_tokenizer(spec);
  }();
  return tok;
}

Ids cat(std::initializer_list<Ids> parts) {
  Ids out;
  for (const Ids& part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

PreferenceData read(const std::string& lines, const PreferenceDataOptions& options = {},
                    const tokenizer::Tokenizer& tok = tiny()) {
  std::istringstream in(lines);
  return read_preference_jsonl(in, "data.jsonl", tok, options);
}

PreferenceDataOptions chatml_options() {
  PreferenceDataOptions options;
  options.chat.format = ChatFormat::chatml;
  return options;
}

PreferencePart text_part(std::string text) { return {false, std::move(text), {}}; }
PreferencePart message_part(std::vector<Message> messages) { return {true, "", std::move(messages)}; }

template <typename T>
std::vector<int64_t> as_int64(const Tensor& t) {
  const std::vector<T> values = t.to_vector<T>();
  return std::vector<int64_t>(values.begin(), values.end());
}

const std::string kChatPair =
    R"({"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "yo"}], )"
    R"("rejected": [{"role": "assistant", "content": "no"}]})";

}  // namespace

TEST_CASE("preference data: the layout is detected from the keys, and text and conversations are counted") {
  const PreferenceData paired = read(R"({"prompt": "hi", "chosen": " wow", "rejected": " no", "score": 7})" "\n" + kChatPair);
  CHECK(paired.layout == PreferenceLayout::paired);
  CHECK(paired.pairs.size() == 2);
  CHECK(paired.stats.text == 1);
  CHECK(paired.stats.conversational == 1);
  CHECK(paired.pairs[1].line == 2);

  const PreferenceData implicit = read(R"({"chosen": "The sky is blue.", "rejected": "The sky is green."})");
  CHECK(implicit.layout == PreferenceLayout::implicit_prompt);
  CHECK(implicit.stats.prompts_extracted == 1);

  const PreferenceData unpaired = read(R"({"prompt": "hi", "completion": " wow", "label": true})" "\n"
                                       R"({"prompt": "hi", "completion": " no", "label": false})");
  CHECK(unpaired.layout == PreferenceLayout::unpaired);
  REQUIRE(unpaired.unpaired.size() == 2);
  CHECK(unpaired.unpaired[0].label);
  CHECK(!unpaired.unpaired[1].label);
  CHECK(unpaired.pairs.empty());

  const PreferenceData prompts =
      read(R"({"prompt": [{"role": "user", "content": "hi"}]})" "\n\n" R"({"prompt": "ab", "answer": 72, "id": "q"})");
  CHECK(prompts.layout == PreferenceLayout::prompt_only);
  REQUIRE(prompts.prompts.size() == 2);
  CHECK(prompts.prompts[0].messages.size() == 1);
  CHECK(prompts.prompts[0].prompt == cat({{kBos, kStartHeader}, kUser, {kEndHeader, '\n', '\n', 'h', 'i', kEot, kStartHeader},
                                          kAssistant, {kEndHeader, '\n', '\n'}}));
  CHECK(prompts.prompts[1].text == "ab");
  CHECK(prompts.prompts[1].prompt == Ids{kBos, 256});
  CHECK(prompts.prompts[1].line == 3);  // the empty line counts
  // The line's prompt as written and its other fields, for the online rewards (exact_match's "answer").
  CHECK(prompts.prompts[0].prompt_value.dump() == R"([{"role":"user","content":"hi"}])");
  CHECK(prompts.prompts[0].fields.dump() == "{}");
  CHECK(prompts.prompts[1].prompt_value.as_string() == "ab");
  CHECK(prompts.prompts[1].fields.dump() == R"({"answer":72,"id":"q"})");
}

TEST_CASE("preference data: text lines are BOS + prompt, completions + EOS, encoded together as TRL does") {
  const PreferenceData data = read(R"({"prompt": "hi", "chosen": " wow", "rejected": " no<|end_of_text|>"})");
  REQUIRE(data.pairs.size() == 1);
  CHECK(data.pairs[0].prompt == Ids{kBos, 'h', 'i'});
  CHECK(data.pairs[0].chosen == Ids{263, 'w', kEos});        // " wo" + "w"
  CHECK(data.pairs[0].rejected == Ids{' ', 'n', 'o', kEos});  // a trailing EOS text is the one EOS
  CHECK(data.stats.boundary_mismatches == 0);

  // A token across the boundary ("a" + "b" is the token "ab"): TRL's slice of the whole, counted.
  const PreferenceData joined = read(R"({"prompt": "a", "chosen": "b", "rejected": "c"})");
  REQUIRE(joined.pairs.size() == 1);
  CHECK(joined.pairs[0].prompt == Ids{kBos, 'a'});
  CHECK(joined.pairs[0].chosen == Ids{kEos});  // whole = [BOS, "ab", EOS]
  CHECK(joined.pairs[0].rejected == Ids{'c', kEos});
  CHECK(joined.stats.boundary_mismatches == 1);
  CHECK(joined.stats.summary().find("1 completions whose prompt's tokens do not begin the whole's") != std::string::npos);

  // Special-token text inside user text stays text.
  const PreferenceData forged = read(R"({"prompt": "hi", "chosen": "<|eot_id|>x", "rejected": "y"})");
  CHECK(forged.pairs[0].chosen.front() == '<');
  PreferenceDataOptions other_eos;
  other_eos.eos_id = kEot;
  CHECK(read(R"({"prompt": "hi", "chosen": "y", "rejected": "n"})", other_eos).pairs[0].chosen == Ids{'y', kEot});
}

TEST_CASE("preference data: Llama-3 conversations: prompt with its generation prompt, the answer with <|eot_id|>") {
  const PreferenceData data = read(kChatPair);
  REQUIRE(data.pairs.size() == 1);
  const Ids prompt = cat({{kBos, kStartHeader}, kUser, {kEndHeader, '\n', '\n', 'h', 'i', kEot, kStartHeader}, kAssistant,
                          {kEndHeader, '\n', '\n'}});
  CHECK(data.pairs[0].prompt == prompt);
  CHECK(data.pairs[0].chosen == Ids{'y', 'o', kEot});
  CHECK(data.pairs[0].rejected == Ids{'n', 'o', kEot});

  // The same ids as encoding the template's text with special tokens read (HF's way).
  tokenizer::EncodeOptions special;
  special.parse_special = true;
  const std::string text = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\nyo<|eot_id|>";
  CHECK(cat({data.pairs[0].prompt, data.pairs[0].chosen}) == tiny().encode(text, special));
}

TEST_CASE("preference data: ChatML conversations: the completion ends with <|im_end|> and its newline, as in TRL") {
  const PreferenceData data = read(kChatPair, chatml_options());
  REQUIRE(data.pairs.size() == 1);
  CHECK(data.pairs[0].prompt ==
        cat({{kImStart}, kUser, {'\n', 'h', 'i', kImEnd, '\n', kImStart}, kAssistant, {'\n'}}));
  CHECK(data.pairs[0].chosen == Ids{'y', 'o', kImEnd, '\n'});
  CHECK(data.pairs[0].rejected == Ids{'n', 'o', kImEnd, '\n'});
  tokenizer::EncodeOptions special;
  special.parse_special = true;
  CHECK(cat({data.pairs[0].prompt, data.pairs[0].rejected}) ==
        tiny().encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nno<|im_end|>\n", special));

  // A default system message comes with the prompt, not the completion.
  PreferenceDataOptions with_system = chatml_options();
  with_system.chat.default_system = "be";
  const PreferenceData system = read(kChatPair, with_system);
  CHECK(system.pairs[0].prompt[0] == kImStart);
  CHECK(tiny().decode(system.pairs[0].prompt).rfind("<|im_start|>system\nbe<|im_end|>\n<|im_start|>user\n", 0) == 0);
  CHECK(system.pairs[0].chosen == Ids{'y', 'o', kImEnd, '\n'});
}

TEST_CASE("preference data: prompt + completion is the whole conversation rendered, in every chat format") {
  // Several turns, a system message, whitespace Llama-3 trims, a two-message completion.
  const std::vector<Message> prompt = {{"system", " be brief "}, {"user", "hi"}, {"assistant", "yo"}, {"user", "\tab c "}};
  const std::vector<Message> chosen = {{"assistant", "abc xyz\n"}};
  const std::vector<Message> rejected = {{"assistant", " wow"}, {"user", "no"}, {"assistant", "aa"}};
  for (const ChatFormat format : {ChatFormat::llama3, ChatFormat::llama3_1, ChatFormat::chatml}) {
    CAPTURE(tokenizer::chat_format_name(format));
    PreferenceDataOptions options;
    options.chat.format = format;
    for (const std::vector<Message>* completion : {&chosen, &rejected}) {
      const PromptCompletionIds ids =
          tokenize_prompt_completion(tiny(), message_part(prompt), message_part(*completion), options);
      std::vector<Message> whole = prompt;
      whole.insert(whole.end(), completion->begin(), completion->end());
      tokenizer::ChatOptions chat = options.chat;
      chat.add_generation_prompt = false;
      CHECK(cat({ids.prompt, ids.completion}) == tokenizer::render_chat(tiny(), whole, chat).ids);
      chat.add_generation_prompt = true;
      CHECK(ids.prompt == tokenizer::render_chat(tiny(), prompt, chat).ids);
      CHECK(ids.prompt_is_prefix);
    }
  }
}

TEST_CASE("preference data: TRL's prompt extraction from chosen and rejected") {
  SUBCASE("conversations: the shared leading messages") {
    const ExtractedPrompt split = extract_prompt(
        message_part({{"system", "s"}, {"user", "sky?"}, {"assistant", "blue"}}),
        message_part({{"system", "s"}, {"user", "sky?"}, {"assistant", "green"}, {"user", "sure?"}, {"assistant", "yes"}}));
    REQUIRE(split.prompt.messages.size() == 2);
    CHECK(split.prompt.messages[1].content == "sky?");
    REQUIRE(split.chosen.messages.size() == 1);
    CHECK(split.chosen.messages[0].content == "blue");
    CHECK(split.rejected.messages.size() == 3);
  }
  SUBCASE("conversations where one is a prefix of the other: TRL's loop stops one message short") {
    const ExtractedPrompt split =
        extract_prompt(message_part({{"user", "q"}, {"assistant", "a"}}),
                       message_part({{"user", "q"}, {"assistant", "a"}, {"user", "more"}, {"assistant", "b"}}));
    CHECK(split.prompt.messages.size() == 1);
    CHECK(split.chosen.messages.size() == 1);
    CHECK(split.rejected.messages.size() == 3);
  }
  SUBCASE("text: the space before the first difference goes to the completions") {
    const ExtractedPrompt split = extract_prompt(text_part("The sky is blue."), text_part("The sky is green."));
    CHECK(split.prompt.text == "The sky is");
    CHECK(split.chosen.text == " blue.");
    CHECK(split.rejected.text == " green.");
    const ExtractedPrompt no_space = extract_prompt(text_part("2+2=4"), text_part("2+2=5"));
    CHECK(no_space.prompt.text == "2+2=");
    CHECK(no_space.chosen.text == "4");
  }
  SUBCASE("text where one is a prefix of the other: one character short of the shorter") {
    const ExtractedPrompt split = extract_prompt(text_part("Yes"), text_part("Yes!"));
    CHECK(split.prompt.text == "Ye");
    CHECK(split.chosen.text == "s");
    CHECK(split.rejected.text == "s!");
  }
  SUBCASE("text is split between characters, not inside one") {
    const ExtractedPrompt accents = extract_prompt(text_part("caf\u00e9"), text_part("caf\u00e8"));  // C3 A9 / C3 A8
    CHECK(accents.prompt.text == "caf");
    CHECK(accents.chosen.text == "\u00e9");
    CHECK(accents.rejected.text == "\u00e8");
    const ExtractedPrompt prefix = extract_prompt(text_part("n\u00e9"), text_part("n\u00e9!"));
    CHECK(prefix.prompt.text == "n");
    CHECK(prefix.chosen.text == "\u00e9");
  }
}

TEST_CASE("preference data: implicit prompts read as pairs, and a text prompt beside conversations is re-extracted") {
  const std::string implicit =
      R"({"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], )"
      R"("rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no"}]})";
  const PreferenceData from_implicit = read(implicit);
  const PreferenceData explicit_pair = read(kChatPair);
  REQUIRE(from_implicit.pairs.size() == 1);
  CHECK(from_implicit.pairs[0].prompt == explicit_pair.pairs[0].prompt);
  CHECK(from_implicit.pairs[0].chosen == explicit_pair.pairs[0].chosen);
  CHECK(from_implicit.pairs[0].rejected == explicit_pair.pairs[0].rejected);

  // UltraFeedback-binarized: "prompt" is the question's text, chosen/rejected the whole dialogs.
  const std::string ultrafeedback = R"({"prompt": "hi", )" + implicit.substr(1);
  const PreferenceData from_ultrafeedback = read(ultrafeedback);
  CHECK(from_ultrafeedback.layout == PreferenceLayout::paired);
  CHECK(from_ultrafeedback.stats.prompts_extracted == 1);
  CHECK(from_ultrafeedback.pairs[0].prompt == explicit_pair.pairs[0].prompt);
  CHECK(from_ultrafeedback.pairs[0].chosen == explicit_pair.pairs[0].chosen);

  const PreferenceData text = read(R"({"chosen": "hi wow", "rejected": "hi no"})");
  CHECK(text.pairs[0].prompt == Ids{kBos, 'h', 'i'});
  CHECK(text.pairs[0].chosen == Ids{263, 'w', kEos});
  CHECK(text.pairs[0].rejected == Ids{' ', 'n', 'o', kEos});
}

TEST_CASE("preference data: the batch is chosen rows then rejected rows, right-padded, masked on completions") {
  const std::vector<PreferencePair> pairs = {{{1, 2}, {3}, {4, 5, 6}, 1}, {{7}, {8, 9}, {10}, 2}};
  PreferenceTruncation no_limit;
  no_limit.max_length = 0;
  const PreferenceBatch batch = make_preference_batch(pairs, no_limit, 99);
  CHECK(batch.pairs == 2);
  CHECK(batch.input_ids.shape() == Shape{4, 5});
  CHECK(batch.input_ids.dtype() == DType::i64);
  CHECK(batch.completion_mask.dtype() == DType::boolean);
  CHECK(as_int64<int64_t>(batch.input_ids) ==
        std::vector<int64_t>{1, 2, 3, 99, 99, 7, 8, 9, 99, 99, 1, 2, 4, 5, 6, 7, 10, 99, 99, 99});
  CHECK(as_int64<bool>(batch.completion_mask) ==
        std::vector<int64_t>{0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0});
  CHECK(batch.lengths == std::vector<int64_t>{3, 3, 5, 2});

  // The same from pointers (a shuffled subset), here in reverse order.
  const std::vector<const PreferencePair*> reversed = {&pairs[1], &pairs[0]};
  const PreferenceBatch subset = make_preference_batch(std::span<const PreferencePair* const>(reversed), no_limit, 0);
  CHECK(as_int64<int64_t>(subset.input_ids) ==
        std::vector<int64_t>{7, 8, 9, 0, 0, 1, 2, 3, 0, 0, 7, 10, 0, 0, 0, 1, 2, 4, 5, 6});
}

TEST_CASE("preference data: max_length keeps the start (TRL's default) or the end of each row") {
  const std::vector<int32_t> prompt = {1, 2, 3}, completion = {4, 5, 6};
  PreferenceTruncation truncation;
  truncation.max_length = 4;
  const PreferenceRow start = preference_row(prompt, completion, truncation);
  CHECK(start.ids == Ids{1, 2, 3, 4});
  CHECK(start.completion_mask == std::vector<uint8_t>{0, 0, 0, 1});
  truncation.mode = TruncationMode::keep_end;
  const PreferenceRow end = preference_row(prompt, completion, truncation);
  CHECK(end.ids == Ids{3, 4, 5, 6});
  CHECK(end.completion_mask == std::vector<uint8_t>{0, 1, 1, 1});
  truncation.max_length = 6;  // fits: untouched
  CHECK(preference_row(prompt, completion, truncation).ids == Ids{1, 2, 3, 4, 5, 6});

  // Reading: with keep_start a prompt of max_length tokens or more is dropped (TRL filters it);
  // with keep_end it stays, and its rows keep their last tokens.
  const std::string lines = R"({"prompt": "hi", "chosen": " wow", "rejected": " no"})" "\n"
                            R"({"prompt": "h", "chosen": " wow", "rejected": " no"})";
  PreferenceDataOptions options;
  options.truncation.max_length = 3;
  const PreferenceData kept_start = read(lines, options);
  CHECK(kept_start.stats.dropped == 1);  // [BOS, h, i] fills 3
  REQUIRE(kept_start.pairs.size() == 1);
  CHECK(kept_start.pairs[0].line == 2);
  CHECK(kept_start.stats.summary().find("1 dropped (the prompt alone fills max_length)") != std::string::npos);
  const PreferenceBatch start_batch = make_preference_batch(kept_start.pairs, options.truncation, 0);
  CHECK(as_int64<int64_t>(start_batch.input_ids) == std::vector<int64_t>{kBos, 'h', 263, kBos, 'h', ' '});
  CHECK(as_int64<bool>(start_batch.completion_mask) == std::vector<int64_t>{0, 0, 1, 0, 0, 1});

  options.truncation.mode = TruncationMode::keep_end;
  const PreferenceData kept_end = read(lines, options);
  CHECK(kept_end.stats.dropped == 0);
  REQUIRE(kept_end.pairs.size() == 2);
  const PreferenceBatch end_batch = make_preference_batch(std::span(kept_end.pairs).first(1), options.truncation, 0);
  CHECK(as_int64<int64_t>(end_batch.input_ids) == std::vector<int64_t>{263, 'w', kEos, 'n', 'o', kEos});
  CHECK(as_int64<bool>(end_batch.completion_mask) == std::vector<int64_t>{1, 1, 1, 1, 1, 1});
}

TEST_CASE("preference data: max_prompt_length keeps the prompt's end (or start), max_completion_length the start") {
  const std::string line = R"({"prompt": "hi", "chosen": " wow", "rejected": " no"})";
  PreferenceDataOptions options;
  options.truncation.max_prompt_length = 2;
  options.truncation.max_completion_length = 2;
  const PreferenceData end = read(line, options);
  CHECK(end.pairs[0].prompt == Ids{'h', 'i'});
  CHECK(end.pairs[0].chosen == Ids{263, 'w'});  // the EOS is cut, as in TRL
  CHECK(end.pairs[0].rejected == Ids{' ', 'n'});
  CHECK(end.stats.prompts_truncated == 1);
  CHECK(end.stats.completions_truncated == 2);
  options.truncation.prompt_mode = TruncationMode::keep_start;
  CHECK(read(line, options).pairs[0].prompt == Ids{kBos, 'h'});
  // Prompt-only lines take max_prompt_length too.
  CHECK(read(R"({"prompt": "ab c"})", options).prompts[0].prompt == Ids{kBos, 256});
}

TEST_CASE("preference data: unpaired examples, unpairing pairs, and KTO's mismatched rows") {
  const std::vector<UnpairedExample> examples = {{{1}, {2, 3}, true, 1}, {{4, 5}, {6}, false, 2}, {{7}, {8}, true, 3}};
  PreferenceTruncation no_limit;
  no_limit.max_length = 0;
  const UnpairedBatch batch = make_unpaired_batch(examples, no_limit, 0, true);
  CHECK(as_int64<int64_t>(batch.input_ids) == std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 0});
  CHECK(as_int64<bool>(batch.completion_mask) == std::vector<int64_t>{0, 1, 1, 0, 0, 1, 0, 1, 0});
  CHECK(as_int64<bool>(batch.labels) == std::vector<int64_t>{1, 0, 1});
  // Prompt i with completion i - 1: (1 | 8), (4 5 | 2 3), (7 | 6).
  CHECK(as_int64<int64_t>(batch.kl_input_ids) == std::vector<int64_t>{1, 8, 0, 0, 4, 5, 2, 3, 7, 6, 0, 0});
  CHECK(as_int64<bool>(batch.kl_completion_mask) == std::vector<int64_t>{0, 1, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0});
  CHECK(!make_unpaired_batch(examples, no_limit, 0).kl_input_ids.defined());

  const std::vector<PreferencePair> pairs = {{{1}, {2}, {3}, 10}, {{4}, {5}, {6}, 11}};
  const std::vector<UnpairedExample> unpaired = unpair_preferences(pairs);
  REQUIRE(unpaired.size() == 4);
  CHECK((unpaired[0].completion == Ids{2} && unpaired[0].label && unpaired[0].line == 10));
  CHECK((unpaired[1].completion == Ids{5} && unpaired[1].label));
  CHECK((unpaired[2].completion == Ids{3} && !unpaired[2].label && unpaired[2].prompt == Ids{1}));
  CHECK((unpaired[3].completion == Ids{6} && !unpaired[3].label));

  const PreferenceData read_back = read(
      R"({"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}], "label": false})");
  REQUIRE(read_back.unpaired.size() == 1);
  CHECK(read_back.unpaired[0].completion == Ids{'y', 'o', kEot});
  CHECK(!read_back.unpaired[0].label);
}

TEST_CASE("preference data: every malformed line is an error naming file:line and the problem") {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"([1, 2])", "expected a JSON object, got array"},
      {R"({"prompt": "p", "chosen": "a"})", "missing \"rejected\" (paired {\"prompt\", \"chosen\", \"rejected\"})"},
      {R"({"chosen": "a b"})", "missing \"rejected\" (implicit prompt {\"chosen\", \"rejected\"})"},
      {R"({"prompt": "p", "completion": "c"})", "missing \"label\" (unpaired {\"prompt\", \"completion\", \"label\"})"},
      {R"({"label": true, "completion": "c"})", "missing \"prompt\" (unpaired"},
      {R"({"messages": [{"role": "user", "content": "hi"}]})", "expected the keys of a preference layout"},
      {R"({"prompt": "p", "chosen": 5, "rejected": "b"})",
       "\"chosen\": expected a string or a list of {\"role\", \"content\"} messages, got number"},
      {R"({"prompt": "p", "chosen": "", "rejected": "b"})", "\"chosen\" is empty"},
      {R"({"prompt": "p", "chosen": "a", "rejected": []})", "\"rejected\" is an empty list"},
      {R"({"prompt": "p", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]})",
       "\"chosen\" is text but \"rejected\" is a list of messages: both must be of one kind"},
      {R"({"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"})",
       "\"prompt\" is a list of messages but \"chosen\" and \"rejected\" are text"},
      {R"({"prompt": "p", "completion": "c", "label": "true"})", "\"label\": expected true or false, got the string \"true\""},
      {R"({"prompt": "p", "completion": "c", "label": 1})", "\"label\": expected true or false, got number"},
      {R"({"prompt": "p", "chosen": "a", "rejected": "b", "label": true})",
       "the line has both \"chosen\"/\"rejected\" (paired) and \"completion\"/\"label\" (unpaired) keys"},
      {R"({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]})",
       "\"chosen\" starts with a \"user\" message: a completion starts with the assistant's turn"},
      {R"({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": ""}], "rejected": [{"role": "assistant", "content": "b"}]})",
       "\"chosen\" is empty (no message has content)"},
      {R"({"prompt": [{"role": "User", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]})",
       "prompt[0].role: unknown role \"User\" (accepted: system, user, assistant; roles are case-sensitive: did you mean \"user\"?)"},
      {R"({"prompt": "p", "chosen": [{"role": "assistant"}], "rejected": [{"role": "assistant", "content": "b"}]})",
       "chosen[0]: missing \"content\""},
      {R"({"prompt": "p", "chosen": ["a"], "rejected": ["b"]})", "chosen[0]: expected a {\"role\", \"content\"} object, got string"},
      {R"({"prompt": "p", "chosen": [{"role": "assistant", "content": ["x"]}], "rejected": "b"})",
       "chosen[0].content: expected a string, got array"},
      {R"({"chosen": "abc", "rejected": "xyz"})",
       "\"chosen\" and \"rejected\" differ from their first character: there is no shared prompt to extract"},
      {R"({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "rejected": [{"role": "user", "content": "r"}, {"role": "assistant", "content": "a"}]})",
       "\"chosen\" and \"rejected\" differ from their first message: there is no shared prompt to extract (give it as "
       "\"prompt\")"},
      {R"({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "x"}, {"role": "assistant", "content": "b"}], "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "y"}, {"role": "assistant", "content": "b"}]})",
       "\"chosen\" after the shared prompt of 2 messages starts with a \"user\" message"},
      {R"({"prompt": [{"role": "user", "content": "q"}], "completion": "c", "label": true})",
       "\"prompt\" is a list of messages but \"completion\" is text"},
      {R"({"prompt": ""})", "\"prompt\" is empty"},
      {R"({"prompt": "p", "chosen": "a", "rejected": "b")", "json: line:1:47: expected ','"},  // the parser's error
  };
  for (const auto& [line, message] : cases) {
    CAPTURE(line);
    // A blank first line: the numbering counts it.
    const std::string expected = "data.jsonl:2: " + message;
    CHECK_THROWS_WITH_AS(read("\n" + line + "\n"), doctest::Contains(expected.c_str()), Error);
  }
  CHECK_THROWS_WITH_AS(read(""), doctest::Contains("data.jsonl: no preference lines (the file is empty)"), Error);
}

TEST_CASE("preference data: a file mixing layouts fails at the first line of another layout, naming both") {
  const std::string paired = R"({"prompt": "hi", "chosen": " wow", "rejected": " no"})";
  const std::string unpaired = R"({"prompt": "hi", "completion": " wow", "label": true})";
  const std::string implicit = R"({"chosen": "hi wow", "rejected": "hi no"})";
  CHECK_THROWS_WITH_AS(read(paired + "\n" + paired + "\n" + unpaired + "\n" + implicit),
                       doctest::Contains("data.jsonl:3: this line is unpaired {\"prompt\", \"completion\", \"label\"} but "
                                         "line 1 is paired {\"prompt\", \"chosen\", \"rejected\"}: a file holds one layout"),
                       Error);
  CHECK_THROWS_WITH_AS(read("\n" + implicit + "\n" + paired),
                       doctest::Contains("data.jsonl:3: this line is paired {\"prompt\", \"chosen\", \"rejected\"} but "
                                         "line 2 is implicit prompt {\"chosen\", \"rejected\"}"),
                       Error);
  // Text and conversational lines of one layout may share a file.
  CHECK(read(paired + "\n" + kChatPair).pairs.size() == 2);

  // skip_malformed counts the odd lines out instead.
  PreferenceDataOptions lenient;
  lenient.skip_malformed = true;
  const PreferenceData data = read(paired + "\n" + unpaired + "\n" + paired, lenient);
  CHECK(data.pairs.size() == 2);
  CHECK(data.stats.skipped == 1);
  CHECK(data.stats.first_skipped.find("data.jsonl:2: this line is unpaired") == 0);
  CHECK_THROWS_WITH_AS(read(R"({"prompt": ""})", lenient),
                       doctest::Contains("data.jsonl: all 1 lines were skipped as malformed (first: data.jsonl:1:"), Error);
}

TEST_CASE("preference data: message roles are the chat format's, and HF's \"tool\" is Llama-3.1's ipython") {
  const std::string line =
      R"({"prompt": [{"role": "user", "content": "2+2"}, {"role": "tool", "content": "4"}], )"
      R"("chosen": [{"role": "assistant", "content": "four"}], "rejected": [{"role": "assistant", "content": "five"}]})";
  CHECK_THROWS_WITH_AS(read(line), doctest::Contains("data.jsonl:1: prompt[1].role: unknown role \"tool\" (accepted: system, "
                                                     "user, assistant)"),
                       Error);
  PreferenceDataOptions llama31;
  llama31.chat.format = ChatFormat::llama3_1;
  const PreferenceData data = read(line, llama31);
  REQUIRE(data.pairs.size() == 1);
  const std::string prompt = tiny().decode(data.pairs[0].prompt);
  CHECK(prompt.find("<|start_header_id|>ipython<|end_header_id|>\n\n4<|eot_id|>") != std::string::npos);
  CHECK(tiny().decode(data.pairs[0].chosen) == "four<|eot_id|>");
}

TEST_CASE("preference data: truncation mode names and the tokenizer's EOS") {
  CHECK(truncation_mode_from_name("keep_start") == TruncationMode::keep_start);
  CHECK(truncation_mode_from_name("keep_end") == TruncationMode::keep_end);
  CHECK_THROWS_WITH_AS(truncation_mode_from_name("keep_middle"),
                       doctest::Contains("unknown truncation mode \"keep_middle\" (expected keep_start or keep_end)"), Error);
  // A tokenizer without an end-of-text token cannot end text completions.
  testing::TinyTokenizerSpec spec;
  spec.added = {{"<|begin_of_text|>", 300, true}};
  const tokenizer::Tokenizer no_eos = testing::tiny_tokenizer(spec);
  CHECK_THROWS_WITH_AS(read(R"({"prompt": "p", "chosen": "a", "rejected": "b"})", {}, no_eos),
                       doctest::Contains("data.jsonl:1: text completions end with EOS, and the tokenizer has no"), Error);
}

// ---- the real Llama-3 tokenizer (the "assets" suite)

TEST_CASE("preference data: Llama-3 Instruct ids of a conversational pair" * doctest::test_suite("assets")) {
  const tokenizer::Tokenizer& tokenizer = testing::llama3_tokenizer();
  // The dialog of the chat tests, whose ids are Meta's reference; its answers reuse its texts.
  const std::string line =
      R"({"prompt": [{"role": "system", "content": "This is a test sentence."}, {"role": "user", "content": "This is a response."}], )"
      R"("chosen": [{"role": "assistant", "content": "This is a test sentence."}], )"
      R"("rejected": [{"role": "assistant", "content": " This is a response.\n"}]})";
  const PreferenceData data = read(line, {}, tokenizer);
  REQUIRE(data.pairs.size() == 1);
  CHECK(data.pairs[0].prompt == Ids{128000, 128006, 9125, 128007, 271, 2028, 374, 264, 1296, 11914, 13, 128009,
                                    128006, 882, 128007, 271, 2028, 374, 264, 2077, 13, 128009,
                                    128006, 78191, 128007, 271});
  CHECK(data.pairs[0].chosen == Ids{2028, 374, 264, 1296, 11914, 13, 128009});
  CHECK(data.pairs[0].rejected == Ids{2028, 374, 264, 2077, 13, 128009});  // trimmed, as the template does
  const PreferenceBatch batch = make_preference_batch(data.pairs, {}, 128255);
  CHECK(batch.input_ids.shape() == Shape{2, 33});
  const std::vector<int64_t> mask = as_int64<bool>(batch.completion_mask);
  std::vector<int64_t> chosen_mask(33, 0);
  std::fill(chosen_mask.begin() + 26, chosen_mask.end(), 1);
  CHECK(std::vector<int64_t>(mask.begin(), mask.begin() + 33) == chosen_mask);
}

TEST_CASE("preference data: Llama-3 text pairs and the whole-conversation identity" * doctest::test_suite("assets")) {
  const tokenizer::Tokenizer& tokenizer = testing::llama3_tokenizer();
  const PreferenceData text = read(R"({"prompt": "This is a test", "chosen": " sentence.", "rejected": " response."})", {},
                                   tokenizer);
  REQUIRE(text.pairs.size() == 1);
  CHECK(text.pairs[0].prompt == Ids{128000, 2028, 374, 264, 1296});
  CHECK(text.pairs[0].chosen == Ids{11914, 13, 128001});
  CHECK(text.pairs[0].rejected == Ids{2077, 13, 128001});

  // Prompt + completion = the template's text of the whole, encoded with special tokens read.
  tokenizer::EncodeOptions special;
  special.parse_special = true;
  const std::vector<Message> prompt = {{"system", "  Be terse.\n"}, {"user", "What's 12345 + 1?"}, {"assistant", "12346."},
                                       {"user", "\u4e2d\u6587?"}};
  const std::vector<Message> completion = {{"assistant", "\n\tYes \U0001f600  "}};
  for (const ChatFormat format : {ChatFormat::llama3, ChatFormat::llama3_1}) {
    PreferenceDataOptions options;
    options.chat.format = format;
    const PromptCompletionIds ids = tokenize_prompt_completion(tokenizer, message_part(prompt), message_part(completion), options);
    std::vector<Message> whole = prompt;
    whole.push_back(completion[0]);
    tokenizer::ChatOptions chat = options.chat;
    chat.add_generation_prompt = false;
    CHECK(cat({ids.prompt, ids.completion}) == tokenizer.encode(tokenizer::render_chat_text(whole, chat), special));
    CHECK(ids.completion.back() == 128009);
    CHECK(ids.prompt_is_prefix);
  }
}
