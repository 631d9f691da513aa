// A Socket.IO server with the same publishing API as the tidings demo: POST /publish with
// {"topic", "data"} broadcasts to every client of that topic (a room).
import http from "node:http";
import { Server } from "socket.io";

const server = http.createServer((req, res) => {
  if (req.method === "POST" && req.url === "/publish") {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      const { topic, data } = JSON.parse(body);
      io.to(topic).emit("event", data);
      res.writeHead(201, { "content-type": "application/json" }).end("{}");
    });
  } else {
    res.writeHead(404).end();
  }
});
const io = new Server(server, { transports: ["websocket"] });
io.on("connection", (socket) => socket.join(socket.handshake.query.topic));
server.listen(Number(process.env.PORT || 0), "127.0.0.1", () => {
  console.log(`listening on http://localhost:${server.address().port}/`);
});
