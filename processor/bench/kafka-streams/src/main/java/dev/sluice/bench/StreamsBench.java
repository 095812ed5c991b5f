package dev.sluice.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.file.Files;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;

/**
 * The benchmark topologies in Kafka Streams.
 *
 * <p>Usage: {@code StreamsBench <bootstrap> <filtermap|aggregate|aggregate-cached> <input> <output>
 * <application.id>}
 *
 * <ul>
 *   <li>filtermap: keep orders with total &gt; 0, add totalCents = total * 100, drop orderId.
 *   <li>aggregate: keep orders with total &gt; 0, sum total per region, emit {"region", "total"}
 *       on every order, as Sluice does (the state store's record cache is off).
 *   <li>aggregate-cached: the same with Kafka Streams' default record cache, which emits only
 *       the latest total per region at each commit.
 * </ul>
 */
public final class StreamsBench {
  private static final ObjectMapper JSON = new ObjectMapper();

  private StreamsBench() {}

  private static JsonNode parse(String v) {
    try {
      return JSON.readTree(v);
    } catch (Exception e) {
      return null;
    }
  }

  private static String write(JsonNode n) {
    try {
      return JSON.writeValueAsString(n);
    } catch (Exception e) {
      throw new IllegalStateException(e);
    }
  }

  public static void main(String[] args) throws Exception {
    if (args.length != 5) {
      System.err.println(
          "usage: StreamsBench <bootstrap> <filtermap|aggregate|aggregate-cached> <input> <output> <application.id>");
      System.exit(2);
    }
    String bootstrap = args[0];
    String topology = args[1];
    String input = args[2];
    String output = args[3];

    Properties props = new Properties();
    props.put(StreamsConfig.APPLICATION_ID_CONFIG, args[4]);
    props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
    props.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
    props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
    props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
    props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
    props.put(StreamsConfig.STATE_DIR_CONFIG, Files.createTempDirectory("streams-bench").toString());
    props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
    if (topology.equals("aggregate")) {
      props.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0L);
    }

    StreamsBuilder builder = new StreamsBuilder();
    KStream<String, JsonNode> orders =
        builder.stream(input, Consumed.with(Serdes.String(), Serdes.String()))
            .mapValues(StreamsBench::parse)
            .filter((k, v) -> v != null && v.path("total").asDouble() > 0.0);
    if (topology.equals("filtermap")) {
      orders
          .mapValues(
              v -> {
                ObjectNode o = ((ObjectNode) v).deepCopy();
                o.put("totalCents", o.path("total").asDouble() * 100.0);
                o.remove("orderId");
                return write(o);
              })
          .to(output, Produced.with(Serdes.String(), Serdes.String()));
    } else {
      orders
          .map((k, v) -> KeyValue.pair(v.path("region").asText(), v.path("total").asDouble()))
          .groupByKey(Grouped.with(Serdes.String(), Serdes.Double()))
          .reduce(Double::sum, Materialized.with(Serdes.String(), Serdes.Double()))
          .toStream()
          .mapValues((region, total) -> write(JSON.createObjectNode().put("region", region).put("total", total)))
          .to(output, Produced.with(Serdes.String(), Serdes.String()));
    }

    KafkaStreams streams = new KafkaStreams(builder.build(), props);
    CountDownLatch done = new CountDownLatch(1);
    Runtime.getRuntime().addShutdownHook(new Thread(() -> {
      streams.close();
      done.countDown();
    }));
    streams.start();
    done.await();
  }
}
