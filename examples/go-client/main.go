// Command goclient chats with foreman (or any Ollama) the way go-llm's Ollama
// provider does: POST <url>/api/chat with a JSON body, an optional
// "Authorization: Bearer <token>" header, and NDJSON back when streaming.
//
//	go run . -url http://127.0.0.1:8080 -prompt "Why is the sky blue?"
//	OLLAMA_API_KEY=secret go run . -stream=false
//
// It prints the reply as it arrives, then one summary line:
//
//	done: chunks=N eval_count=M
//
// Any error (a non-2xx status, an "error" line in the stream, a stream that
// ends before "done") goes to stderr and the exit code is 1.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type chatRequest struct {
	Model    string    `json:"model"`
	Messages []message `json:"messages"`
	Stream   bool      `json:"stream"`
}

// chatResponse is one NDJSON line of a stream, or the whole non-streamed answer.
type chatResponse struct {
	Message   message `json:"message"`
	Done      bool    `json:"done"`
	EvalCount int     `json:"eval_count"`
	Error     *string `json:"error"`
}

func main() {
	url := flag.String("url", "http://127.0.0.1:8080", "base URL of foreman (or Ollama)")
	// Not os.Getenv as the flag default: -h would print the secret.
	token := flag.String("token", "", "bearer token (default $OLLAMA_API_KEY)")
	model := flag.String("model", "llama3.2", "model to chat with")
	prompt := flag.String("prompt", "Why is the sky blue?", "the user message")
	stream := flag.Bool("stream", true, "stream the reply as NDJSON")
	flag.Parse()
	if *token == "" {
		*token = os.Getenv("OLLAMA_API_KEY")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	req := chatRequest{
		Model:    *model,
		Messages: []message{{Role: "user", Content: *prompt}},
		Stream:   *stream,
	}
	if err := chat(ctx, os.Stdout, *url, *token, req); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func chat(ctx context.Context, out io.Writer, baseURL, token string, body chatRequest) error {
	payload, err := json.Marshal(body)
	if err != nil {
		return err
	}
	url := strings.TrimRight(baseURL, "/") + "/api/chat"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(payload))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return statusError(resp)
	}

	chunks, evalCount := 0, 0
	if body.Stream {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 0, 64*1024), 16<<20)
		done := false
		for !done && sc.Scan() {
			line := bytes.TrimSpace(sc.Bytes())
			if len(line) == 0 {
				continue
			}
			var r chatResponse
			if err := json.Unmarshal(line, &r); err != nil {
				return fmt.Errorf("bad stream line %q: %w", line, err)
			}
			if r.Error != nil {
				return fmt.Errorf("stream error: %s", *r.Error)
			}
			chunks++
			fmt.Fprint(out, r.Message.Content)
			done, evalCount = r.Done, r.EvalCount
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("reading stream: %w", err)
		}
		if !done {
			return errors.New("stream ended before a done line")
		}
	} else {
		var r chatResponse
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return fmt.Errorf("decoding response: %w", err)
		}
		if r.Error != nil {
			return errors.New(*r.Error)
		}
		chunks, evalCount = 1, r.EvalCount
		fmt.Fprint(out, r.Message.Content)
	}
	fmt.Fprintf(out, "\ndone: chunks=%d eval_count=%d\n", chunks, evalCount)
	return nil
}

// statusError reads Ollama's {"error": "..."} body, falling back to the raw text.
func statusError(resp *http.Response) error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e struct {
		Error string `json:"error"`
	}
	msg := strings.TrimSpace(string(raw))
	if json.Unmarshal(raw, &e) == nil && e.Error != "" {
		msg = e.Error
	}
	return fmt.Errorf("HTTP %d: %s", resp.StatusCode, msg)
}
